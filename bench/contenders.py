"""The two contenders, each as one timed PPO step and one timed evaluation pass.

`notebook_*` re-creates the lab notebook's loop (bf16 model, one prompt per
`ppo_trainer.generate` call with its own max_new_tokens, a transformers
text-classification pipeline for the reward, trl's step; evaluation one sample
at a time through an `evaluate` toxicity measurement). `ours_*` runs the
project's path (`DetoxTrainer.run_step`; batched `generate` + `RewardModel.score`).

Both get the same prompts and the same per-prompt budgets, and EOS is
suppressed until the budget (min_length = budget + 1: the decoder start token
counts), so both generate exactly the same number of tokens. Two deviations
from the notebook, both forced by that: min_length is the budget instead of 5,
and the reward pipeline truncates to the classifier's 512-token window
(forced-length texts can exceed it; the project truncates too).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from flan_t5_detox.contract.settings import TrainConfig
from flan_t5_detox.ml import data
from flan_t5_detox.ml.adapters import load_merged, read_lora_config
from flan_t5_detox.ml.generation import LengthSampler, SamplingSettings, detokenize, generate
from flan_t5_detox.ml.loading import load_tokenizer
from flan_t5_detox.ml.policy import build_policy
from flan_t5_detox.ml.ppo import DetoxTrainer
from flan_t5_detox.ml.rewards import RewardModel, reward_text
from flan_t5_detox.ml.runtime import pick_dtype, set_threads, use_fast_mkl_kernels

from .common import Workload
from .timing import Measurement, Timer, count_tokens, instrument_trl, ppo_other, progress, warm_up


# -- the notebook's loop ------------------------------------------------------------------
def _notebook_machine_settings(w: Workload) -> None:
    """The notebook as written (bf16) runs with the library defaults. Its fp32 variant also gets
    the MKL kernel choice ours makes on AMD CPUs, so the two fp32 loops differ only in the loop."""
    if w.notebook_dtype == "float32":
        use_fast_mkl_kernels()


def _notebook_policy(w: Workload):
    from peft import LoraConfig, PeftModel, TaskType
    from transformers import AutoModelForSeq2SeqLM
    from trl import AutoModelForSeq2SeqLMWithValueHead, create_reference_model

    dtype = getattr(torch, w.notebook_dtype)
    lora_config = LoraConfig(
        r=32, lora_alpha=32, target_modules=["q", "v"], lora_dropout=0.05, bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM,
    )  # fmt: skip
    model = AutoModelForSeq2SeqLM.from_pretrained(w.base_model, torch_dtype=dtype)
    peft_model = PeftModel.from_pretrained(
        model, w.peft_checkpoint, lora_config=lora_config, torch_dtype=dtype, is_trainable=True
    )
    ppo_model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(
        peft_model, torch_dtype=dtype, is_trainable=True
    )
    return ppo_model, create_reference_model(ppo_model)


def notebook_ppo(w: Workload) -> dict:
    from transformers import pipeline
    from trl import PPOConfig, PPOTrainer

    _notebook_machine_settings(w)
    m = Measurement()
    tokenizer = load_tokenizer(w.base_model)
    ppo_model, ref_model = _notebook_policy(w)
    config = PPOConfig(
        model_name="google/flan-t5-base",
        learning_rate=1.41e-5,
        ppo_epochs=1,
        mini_batch_size=4,
        batch_size=len(w.train_prompts),
    )
    trainer = PPOTrainer(config=config, model=ppo_model, ref_model=ref_model, tokenizer=tokenizer)
    reward_pipe = pipeline("text-classification", model=w.reward_model, device="cpu")
    instrument_trl(trainer, m)
    prompt_tensors = [torch.tensor(tokenizer.encode(p)) for p in w.train_prompts]
    queries = [tokenizer.decode(q) for q in prompt_tensors]
    warm_up(trainer.accelerator.unwrap_model(trainer.model), prompt_tensors[0])

    torch.manual_seed(w.seed)
    start = time.perf_counter()
    with Timer(m, "generate"):
        summaries = []
        for prompt, budget in zip(prompt_tensors, w.budgets):
            kwargs = {"min_length": budget + 1, "top_k": 0.0, "top_p": 1.0, "do_sample": True}
            kwargs["max_new_tokens"] = budget
            summary = trainer.generate(prompt, **kwargs)
            summaries.append(summary.squeeze()[-budget:])
            progress("generate", f"{len(summaries)}/{len(prompt_tensors)} prompts, {budget} tokens", start)
    with Timer(m, "reward"):
        responses = [tokenizer.decode(s.squeeze()) for s in summaries]
        pairs = [q + r for q, r in zip(queries, responses)]
        outputs = reward_pipe(pairs, top_k=None, function_to_apply="none", batch_size=16, truncation=True)
        rewards = [torch.tensor(out[0]["score"]) for out in outputs]
    with Timer(m, "ppo"):
        trainer.step(prompt_tensors, summaries, rewards)
    m.seconds["step"] = time.perf_counter() - start
    ppo_other(m, m.seconds["ppo"])
    count_tokens(m, tokenizer, prompt_tensors, summaries, reward_pipe.tokenizer, pairs)
    m.notes["dtype"] = w.notebook_dtype
    return m.result()


class _Toxicity:
    """The `evaluate` toxicity measurement (its hub script cannot be fetched here): a
    text-classification pipeline with all labels' softmax scores, reporting `toxic_label`'s."""

    @staticmethod
    def load(model: str, toxic_label: str = "hate"):
        import datasets
        import evaluate
        from transformers import pipeline

        class Toxicity(evaluate.Measurement):
            def _info(self):
                return evaluate.MeasurementInfo(
                    module_type="measurement", description="toxicity", citation="", inputs_description="",
                    features=datasets.Features({"predictions": datasets.Value("string", id="sequence")}),
                )  # fmt: skip

            def _download_and_prepare(self, dl_manager):
                self.classifier = pipeline(
                    "text-classification", model=self.config_name, top_k=99999, truncation=True
                )

            def _compute(self, predictions):
                scores = [
                    next(s["score"] for s in row if s["label"] == toxic_label)
                    for row in self.classifier(predictions)
                ]
                return {"toxicity": scores}

        measurement = Toxicity(config_name=model)
        measurement.download_and_prepare()
        return measurement


def notebook_eval(w: Workload) -> dict:
    from transformers import GenerationConfig

    _notebook_machine_settings(w)
    m = Measurement()
    tokenizer = load_tokenizer(w.base_model)
    _, ref_model = _notebook_policy(w)
    evaluator = _Toxicity.load(w.reward_model)
    warm_up(ref_model, torch.tensor(tokenizer.encode(w.eval_prompts[0])))

    torch.manual_seed(w.seed)
    toxicities, responses = [], []
    start = time.perf_counter()
    for text in w.eval_prompts:
        progress("eval", f"{len(responses)}/{len(w.eval_prompts)} samples", start)
        with Timer(m, "generate"):
            input_ids = tokenizer(text, return_tensors="pt", padding=True).input_ids
            generation_config = GenerationConfig(
                max_new_tokens=w.eval_new_tokens, min_length=w.eval_new_tokens + 1, top_k=0.0, top_p=1.0,
                do_sample=True,
            )  # fmt: skip
            response_ids = ref_model.generate(input_ids=input_ids, generation_config=generation_config)
            responses.append(response_ids[0])
        with Timer(m, "reward"):
            generated = tokenizer.decode(response_ids[0], skip_special_tokens=True)
            toxicities.extend(evaluator.compute(predictions=[text + " " + generated])["toxicity"])
    m.seconds["total"] = time.perf_counter() - start
    queries = [tokenizer(p).input_ids for p in w.eval_prompts]
    texts = [
        p + " " + tokenizer.decode(r, skip_special_tokens=True) for p, r in zip(w.eval_prompts, responses)
    ]
    count_tokens(m, tokenizer, queries, [r[1:] for r in responses], evaluator.classifier.tokenizer, texts)
    m.notes["dtype"] = w.notebook_dtype
    return m.result()


# -- the project's path ---------------------------------------------------------------------
class _FixedLengths(LengthSampler):
    """Stands in for the trainer's seeded LengthSampler: the workload's budgets."""

    def __init__(self, budgets: list[int]):
        super().__init__(min(budgets), max(budgets) + 1, seed=0)
        self.budgets = budgets

    def sample(self, n: int) -> list[int]:
        return self.budgets[:n]


class _InOrder:
    """Stands in for the trainer's BatchOrder: prompt i gets budget i, as in the notebook re-creation."""

    def __init__(self, n: int):
        self.n = n

    def batch(self, position: int) -> list[int]:
        return list(range(self.n))


def ours_ppo(w: Workload) -> dict:
    m = Measurement()
    threads = set_threads(0)
    dtype = pick_dtype("auto")
    tokenizer = load_tokenizer(w.base_model)
    peft_dir = Path(w.peft_checkpoint)
    policy = build_policy(load_merged(w.base_model, peft_dir, dtype), read_lora_config(peft_dir), w.seed)
    reward_model = RewardModel(w.reward_model, "nothate", batch_size=len(w.train_prompts))

    # min_length above every budget: EOS is never sampled, each row stops at its budget.
    config = TrainConfig(
        batch_size=len(w.train_prompts),
        mini_batch_size=w.mini_batch_size,
        output_min_length=min(w.budgets),
        output_max_length=max(w.budgets) + 1,
        min_length=max(w.budgets) + 1,
        seed=w.seed,
    )
    prompts = [
        data.Example(id=str(i), dialogue="", summary="", prompt=p) for i, p in enumerate(w.train_prompts)
    ]
    trainer = DetoxTrainer(config, policy, tokenizer, prompts, reward_model.rewards)
    trainer.lengths, trainer.order = _FixedLengths(w.budgets), _InOrder(len(prompts))
    instrument_trl(trainer.trl, m)
    sent = {}
    ppo_step = trainer.trl.ppo_step

    def step(queries, responses, scores, epochs, encoded=None):
        sent["responses"] = responses  # what PPO trains on, for the token counts
        return ppo_step(queries, responses, scores, epochs, encoded)

    trainer.trl.ppo_step = step
    warm_up(policy, trainer.query_ids[0])

    torch.manual_seed(w.seed)
    start = time.perf_counter()
    result = trainer.run_step()
    m.seconds["step"] = time.perf_counter() - start
    for phase in ("generate", "reward", "ppo"):
        m.seconds[phase] = result.metrics[f"time_{phase}"]
    ppo_other(m, m.seconds["ppo"])
    texts = [reward_text(q, r) for q, r in zip(result.queries, result.responses)]
    count_tokens(
        m, tokenizer, trainer.query_ids, [r[1:] for r in sent["responses"]], reward_model.tokenizer, texts
    )
    m.notes.update(dtype=str(dtype).replace("torch.", ""), threads=str(threads))
    return m.result()


def ours_eval(w: Workload) -> dict:
    m = Measurement()
    threads = set_threads(0)
    dtype = pick_dtype("auto")
    tokenizer = load_tokenizer(w.base_model)
    summarizer = load_merged(w.base_model, Path(w.peft_checkpoint), dtype).eval()
    reward_model = RewardModel(w.reward_model, "nothate", batch_size=16)
    queries = [torch.tensor(ids) for ids in tokenizer(w.eval_prompts, truncation=True)["input_ids"]]
    warm_up(summarizer, queries[0])
    sampling = SamplingSettings(min_length=w.eval_new_tokens + 1, top_k=0, top_p=1.0)

    torch.manual_seed(w.seed)
    start = time.perf_counter()
    with Timer(m, "generate"):
        responses = generate(summarizer, tokenizer, queries, [w.eval_new_tokens] * len(queries), sampling, 16)
    with Timer(m, "reward"):
        texts = [reward_text(p, r) for p, r in zip(w.eval_prompts, detokenize(tokenizer, responses))]
        reward_model.score(texts).probabilities[:, reward_model.index_of("hate")]
    m.seconds["total"] = time.perf_counter() - start
    count_tokens(m, tokenizer, queries, [r[1:] for r in responses], reward_model.tokenizer, texts)
    m.notes.update(dtype=str(dtype).replace("torch.", ""), threads=str(threads))
    return m.result()


WORKERS = {
    "notebook_ppo": notebook_ppo,
    "notebook_eval": notebook_eval,
    "ours_ppo": ours_ppo,
    "ours_eval": ours_eval,
}
