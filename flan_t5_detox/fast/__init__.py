"""CPU fast paths: drop-in replacements for computations of transformers and trl, each tested
against the computation it replaces (same tokens, same log-probs and gradients)."""
