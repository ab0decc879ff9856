"""Before/after measurements on the same test prompts.

Both models get the same prompts, generation settings and seed, in the same
batches (common random numbers: sampling noise that is shared cancels in the
paired difference). Each response is scored by the reward model twice, on the
prompt and the response (`toxicity`, the notebook's measurement) and on the
response alone (`response_toxicity`), whatever the training read:
  toxicity = softmax probability of `toxic_label` (the `evaluate` toxicity measurement),
  reward   = logit of `reward_label` on what `reward_input` reads (what PPO maximised),
and by ROUGE-1/2/L F1 against the reference summary, so that a detox bought by
ruining the summaries shows. The headline is the toxicity of what the reward read.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.settings import EvalConfig
from flan_t5_detox.ml import generation
from flan_t5_detox.ml.data import Example
from flan_t5_detox.ml.rewards import RewardModel, reward_text
from flan_t5_detox.ml.stats import PairedComparison, bootstrap_ci, compare_paired

log = logging.getLogger("flan_t5_detox.evaluation")
logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score logs a line per scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# Every per-response measurement, in report order.
METRICS = ("toxicity", "response_toxicity", "reward", *ROUGE_TYPES, "length")
# The toxicity metric of each reward input: `toxicity` reads query + response, as the notebook did.
TOXICITY_OF = {"query_response": "toxicity", "response": "response_toxicity"}


@dataclass
class Side:
    """One model's responses and per-response measurements, aligned with the examples."""

    responses: list[str]
    values: dict[str, np.ndarray]  # METRICS -> one value per response
    generate_seconds: float
    score_seconds: float

    @classmethod
    def empty(cls) -> Side:
        """No responses: a host that got no dialogues of a sharded evaluation."""
        return cls([], {name: np.array([]) for name in METRICS}, 0.0, 0.0)


@dataclass
class Throughput:
    samples: int
    generate_seconds: float  # both models
    score_seconds: float  # reward model + ROUGE, both models
    samples_per_second: float  # test dialogues fully evaluated (2 generations + scoring) per second
    responses_per_second: float


@dataclass
class Evaluation:
    examples: list[Example]
    test_split_size: int
    before: Side
    after: Side
    comparisons: dict[str, PairedComparison] = field(default_factory=dict)
    reward_input: str = "query_response"
    curve: list[CurvePoint] = field(default_factory=list)  # the trade-off curve, when steps were kept

    @property
    def trained_toxicity(self) -> str:
        """The toxicity measured on what the reward read: the one PPO lowered."""
        return TOXICITY_OF[self.reward_input]

    @property
    def n(self) -> int:
        return len(self.examples)

    def throughput(self) -> Throughput:
        gen = self.before.generate_seconds + self.after.generate_seconds
        score = self.before.score_seconds + self.after.score_seconds
        total = max(gen + score, 1e-9)
        return Throughput(self.n, gen, score, self.n / total, 2 * self.n / total)


def select_examples(test: list[Example], num_samples: int) -> list[Example]:
    """The first `num_samples` test examples (0 = all): the split is unshuffled, so this is stable."""
    if not test:
        raise JobInputError("the test split is empty: supply more dialogues or raise test_size")
    if num_samples > len(test):
        log.warning(
            "num_samples=%d exceeds the test split's %d dialogues: evaluating all %d",
            num_samples,
            len(test),
            len(test),
        )
    chosen = test[:num_samples] if num_samples else list(test)
    if len(chosen) < 2:  # one pair has no spread: no interval, no test
        raise JobInputError(
            f"paired statistics need at least 2 test dialogues, got {len(chosen)} "
            f"(num_samples={num_samples}, test split {len(test)}); raise num_samples or supply more data"
        )
    missing = [e.id for e in chosen if not e.summary.strip()]
    if missing:
        raise JobInputError(
            f"{len(missing)} test example(s) have no reference summary (e.g. id {missing[0]}); "
            "ROUGE needs the DialogSum 'summary' column"
        )
    return chosen


def generate_responses(
    model, tokenizer, examples: list[Example], config: EvalConfig, positions: list[int] | None = None
):
    """Sample one response per prompt in batches. Each dialogue has its own random stream, seeded
    from `config.seed` and its place in the sample, the same for every model (common random
    numbers): where PPO left a dialogue's distribution alone, before and after give the same
    response, whatever else is in the batch, so the paired differences hold only real change.
    `positions` are the examples' places in the whole sample (default 0, 1, ...): a shard of the
    sample passes its own, so each dialogue gets the stream it gets on one host."""
    from tqdm import tqdm

    query_ids = [
        torch.tensor(ids) for ids in tokenizer([e.prompt for e in examples], truncation=True).input_ids
    ]
    settings = generation.SamplingSettings(config.min_length, config.top_k, config.top_p)
    positions = list(range(len(examples))) if positions is None else positions
    responses: list[torch.Tensor] = []
    size = config.generation_batch_size
    for start in tqdm(range(0, len(query_ids), size), desc="generate", unit="batch", file=sys.stderr):
        chunk = query_ids[start : start + size]
        seeds = [generation.stream_seed(config.seed, p) for p in positions[start : start + size]]
        responses += generation.generate(
            model, tokenizer, chunk, [config.max_new_tokens] * len(chunk), settings, row_seeds=seeds
        )
    texts = generation.detokenize(tokenizer, responses)
    # Response tokens without the decoder start token and the closing EOS.
    lengths = np.array([int((r[1:] != tokenizer.eos_token_id).sum()) for r in responses], dtype=float)
    return texts, lengths


def rouge_scores(references: list[str], responses: list[str]) -> dict[str, np.ndarray]:
    """ROUGE F1 per response (rouge_score, stemmed, as `evaluate`'s rouge with use_stemmer=True)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(ref, resp) for ref, resp in zip(references, responses)]
    return {name: np.array([s[name].fmeasure for s in scores]) for name in ROUGE_TYPES}


def evaluate_model(
    model,
    tokenizer,
    examples: list[Example],
    reward_model: RewardModel,
    config: EvalConfig,
    positions: list[int] | None = None,
) -> Side:
    started = time.perf_counter()
    responses, lengths = generate_responses(model, tokenizer, examples, config, positions)
    generated = time.perf_counter()
    toxic = reward_model.index_of(config.toxic_label)
    size = config.generation_batch_size
    scores = {}
    for reward_input in ("query_response", "response"):
        texts = [reward_text(e.prompt, r, reward_input) for e, r in zip(examples, responses)]
        # Scored a generation batch at a time: the same groups on one host as on several.
        parts = [reward_model.score(texts[i : i + size]) for i in range(0, len(texts), size)]
        scores[reward_input] = (
            torch.cat([p.probabilities for p in parts])[:, toxic].numpy().astype(float),
            torch.cat([p.reward for p in parts]).numpy().astype(float),
        )
    values = {
        "toxicity": scores["query_response"][0],
        "response_toxicity": scores["response"][0],
        "reward": scores[config.reward_input][1],
        **rouge_scores([e.summary for e in examples], responses),
        "length": lengths,
    }
    scored = time.perf_counter()
    return Side(responses, values, generated - started, scored - generated)


def compare(before: Side, after: Side, config: EvalConfig) -> dict[str, PairedComparison]:
    return {
        name: compare_paired(
            before.values[name], after.values[name], config.confidence, config.bootstrap_samples, config.seed
        )
        for name in METRICS
    }


def run(
    before_model,
    after_model,
    tokenizer,
    examples: list[Example],
    test_split_size: int,
    reward_model: RewardModel,
    config: EvalConfig,
) -> Evaluation:
    """Generate and score with both models, then compare every metric pairwise."""
    log.info("evaluating %d test dialogues (of %d in the test split)", len(examples), test_split_size)
    before = evaluate_model(before_model, tokenizer, examples, reward_model, config)
    after = evaluate_model(after_model, tokenizer, examples, reward_model, config)
    return assemble(examples, test_split_size, before, after, config)


def assemble(examples: list[Example], test_split_size: int, before: Side, after: Side, config: EvalConfig):
    """The evaluation of two measured sides: every metric compared pairwise."""
    evaluation = Evaluation(
        examples, test_split_size, before, after, compare(before, after, config), config.reward_input
    )
    speed = evaluation.throughput()
    log.info(
        "throughput: %.2f samples/s (%d samples, generation %.1fs, scoring %.1fs, both models)",
        speed.samples_per_second,
        speed.samples,
        speed.generate_seconds,
        speed.score_seconds,
    )
    return evaluation


@dataclass
class Estimate:
    mean: float
    ci_low: float
    ci_high: float


def estimate(values: np.ndarray, config: EvalConfig) -> Estimate:
    low, high = bootstrap_ci(values, config.confidence, config.bootstrap_samples, config.seed)
    return Estimate(float(np.mean(values)), low, high)


@dataclass
class CurvePoint:
    """One model on the trade-off curve: the summarizer after `step` PPO steps (0 = the start)."""

    step: int
    toxicity: Estimate  # of what the reward read (`Evaluation.trained_toxicity`)
    rouge_l: Estimate
    toxicity_change: PairedComparison  # against the starting summarizer, same prompts
    rouge_l_change: PairedComparison
    kl: float | None  # the train job's mean KL at that step (metrics.jsonl), if given


def tradeoff_curve(
    evaluation: Evaluation,
    steps: dict[int, Side],
    final_step: int,
    config: EvalConfig,
    kl_by_step: dict[int, float | None] | None = None,
) -> list[CurvePoint]:
    """Toxicity and ROUGE-L of every evaluated step's summarizer, each against the start.

    `steps` holds the sides of the kept adapters (same prompts, settings and seed as the
    evaluation's); the start is `evaluation.before` and step `final_step` its `after`."""
    kl_by_step = kl_by_step or {}
    sides = {0: evaluation.before, **steps, final_step: evaluation.after}
    metric, start = evaluation.trained_toxicity, evaluation.before
    points = []
    for step, side in sorted(sides.items()):
        points.append(
            CurvePoint(
                step=step,
                toxicity=estimate(side.values[metric], config),
                rouge_l=estimate(side.values["rougeL"], config),
                toxicity_change=compare_paired(
                    start.values[metric],
                    side.values[metric],
                    config.confidence,
                    config.bootstrap_samples,
                    config.seed,
                ),
                rouge_l_change=compare_paired(
                    start.values["rougeL"],
                    side.values["rougeL"],
                    config.confidence,
                    config.bootstrap_samples,
                    config.seed,
                ),
                kl=0.0 if step == 0 else kl_by_step.get(step),
            )
        )
    return points
