"""The PPO policy: the merged summarizer with a fresh trainable LoRA and trl's value head.

Its reference (the fresh adapter disabled) is the starting summarizer: see `adapters`."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from trl import AutoModelForSeq2SeqLMWithValueHead

from flan_t5_detox.ml.adapters import fresh_adapter_config


def disable_dropout(model: torch.nn.Module) -> None:
    """Rollouts, reference and PPO passes must see the same deterministic network."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _keep_trainable_in_fp32(model: torch.nn.Module) -> None:
    """Trainable weights stay fp32 even when the frozen base runs in bf16 (Adam steps of
    lr~1e-5 vanish in bf16's 8-bit mantissa)."""
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()


def _upcast_output(module, _inputs, output):
    return output.float()


def _cast_input_to_fp32(_module, inputs):
    return tuple(x.float() if torch.is_tensor(x) else x for x in inputs)


def build_policy(summarizer, summarization_config: LoraConfig, seed: int):
    """Fresh trainable LoRA on the merged summarizer, plus trl's value head (no dropout).

    `seed` fixes the random init of LoRA A and the value head: with B = 0 the first
    rollout does not depend on them, but every later step does, so two runs with the
    same seed only agree if these do.
    """
    torch.manual_seed(seed)
    peft_model = get_peft_model(summarizer, fresh_adapter_config(summarization_config))
    policy = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(peft_model, summary_dropout_prob=0.0)
    policy.is_peft_model = True
    _keep_trainable_in_fp32(policy)
    policy.v_head.register_forward_pre_hook(_cast_input_to_fp32)
    # log-probs and the PPO ratio are computed from these logits: keep them fp32.
    peft_model.get_output_embeddings().register_forward_hook(_upcast_output)
    disable_dropout(policy)
    policy.eval()
    return policy
