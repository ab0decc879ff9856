"""LoRA adapters: read, validate against a base model, merge, concatenate, save, publish.

Why two adapters: trl 0.4 computes a PEFT policy's reference log-probs by *disabling its
adapter*. Were PPO to train the summarization adapter itself, the reference would be bare
FLAN-T5, not the summarizer training starts from. So the summarization adapter is merged into
the base weights (`load_summarizer`) and PPO trains a fresh LoRA on top (`fresh_adapter_config`,
zero-initialised B: a no-op at step 0). Disabling the fresh adapter gives exactly the starting
summarizer, so the KL reference is right and the KL at step 0 is zero.

On save the two are concatenated along the rank into one LoRA adapter for the plain base model
(`combined_adapter`; exact because LoRA updates add:
B1 A1 s1 + B2 A2 s2 = [B1 s1/s, B2 s2/s][A1; A2] s), so users load `model/` with stock
`PeftModel.from_pretrained(base, model_dir)`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, set_peft_model_state_dict

from flan_t5_detox.contract.disk import writing
from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.outputs import publish
from flan_t5_detox.contract.paths import ADAPTER_CONFIG, ADAPTER_INFO, ADAPTER_WEIGHTS, VALUE_HEAD_WEIGHTS
from flan_t5_detox.ml.loading import load_seq2seq, read_weight_file


def read_lora_config(adapter_dir: Path) -> LoraConfig:
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise JobInputError(f"{adapter_dir} is not a PEFT adapter folder: {ADAPTER_CONFIG} is missing")
    config = LoraConfig.from_pretrained(str(adapter_dir))
    if getattr(config, "peft_type", None) is None or str(config.peft_type) not in ("LORA", "PeftType.LORA"):
        raise JobInputError(
            f"{adapter_dir} holds a {config.peft_type} adapter; only LoRA adapters are supported"
        )
    return config


def read_lora_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors, unpickled with weights_only=True (no code runs from the file)."""
    weights_path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise JobInputError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}")
    return read_weight_file(weights_path, "adapter")


def load_adapter(model, adapter_dir: Path, is_trainable: bool = False) -> PeftModel:
    """Wrap `model` with the LoRA adapter in `adapter_dir`, after checking every tensor fits."""
    adapter_dir = Path(adapter_dir)
    config = read_lora_config(adapter_dir)
    config.inference_mode = not is_trainable
    weights = read_lora_weights(adapter_dir)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = config.target_modules
    absent = sorted(set(targets) - present) if isinstance(targets, (list, tuple, set)) else []
    if absent:
        raise JobInputError(
            f"the adapter in {adapter_dir} targets modules {absent} that the base model does not have "
            f"(adapter_config.json target_modules); it was made for another architecture"
        )
    peft_model = get_peft_model(model, config)
    # peft would otherwise skip or crash obscurely on a tensor that does not fit.
    expected = {k: v.shape for k, v in peft_model.state_dict().items() if "lora_" in k}
    problems = []
    for key, tensor in weights.items():
        shape = expected.get(key.replace(".weight", ".default.weight"))
        if shape is None:
            problems.append(f"{key} (no such module in the base model)")
        elif tuple(shape) != tuple(tensor.shape):
            problems.append(f"{key} has shape {tuple(tensor.shape)}, the base model needs {tuple(shape)}")
    if problems or not weights:
        detail = "; ".join(problems[:3]) or "the adapter holds no LoRA weights"
        raise JobInputError(f"the adapter in {adapter_dir} does not fit the base model: {detail}")
    set_peft_model_state_dict(peft_model, weights)
    if not is_trainable:
        for param in peft_model.parameters():
            param.requires_grad_(False)
    return peft_model


def load_merged(base_model: str | Path, adapter_dir: Path, dtype: torch.dtype = torch.float32):
    """The base model with an adapter merged into its weights, merged in fp32 and then cast, in
    eval mode. For the summarization adapter this is the starting policy and the KL reference;
    for `model/` the detoxified summarizer, computed with the same arithmetic."""
    base = load_seq2seq(base_model, torch.float32)
    return load_adapter(base, adapter_dir).merge_and_unload().to(dtype).eval()


def fresh_adapter_config(summarization: LoraConfig) -> LoraConfig:
    """Same shape and targets as the summarization adapter, no dropout (deterministic PPO passes)."""
    return LoraConfig(
        r=summarization.r,
        lora_alpha=summarization.lora_alpha,
        target_modules=list(summarization.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM,
    )


def _lora_state(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    return {
        k.replace(".default.weight", ".weight"): v.detach().float().cpu()
        for k, v in peft_model.state_dict().items()
        if "lora_" in k
    }


def combined_adapter(summarization_dir: Path, detox_model: PeftModel) -> tuple[LoraConfig, dict]:
    """One LoRA adapter equal to summarization + detox, for the plain base model."""
    summ_config = read_lora_config(summarization_dir)
    summ = read_lora_weights(summarization_dir)
    detox_config = detox_model.peft_config["default"]
    detox = _lora_state(detox_model)
    r = summ_config.r + detox_config.r
    s1 = summ_config.lora_alpha / summ_config.r
    s2 = detox_config.lora_alpha / detox_config.r
    scale = s1 + s2  # any positive value works; alpha = scale * r keeps the formula exact
    combined = {}
    for key, a_detox in detox.items():
        if "lora_A" not in key:
            continue
        b_key = key.replace("lora_A", "lora_B")
        a_summ, b_summ = summ[key].float(), summ[b_key].float()
        combined[key] = torch.cat([a_summ, a_detox], dim=0)
        combined[b_key] = torch.cat([b_summ * (s1 / scale), detox[b_key] * (s2 / scale)], dim=1)
    config = LoraConfig(
        r=r,
        lora_alpha=scale * r,
        target_modules=list(detox_config.target_modules),
        lora_dropout=summ_config.lora_dropout,
        bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM,
        base_model_name_or_path=summ_config.base_model_name_or_path,
    )
    return config, combined


@dataclass
class Provenance:
    """Where the inputs of a training run came from (a hub name or "channel:<name>")."""

    base_model: str
    summarization_adapter: str
    reward_model: str
    reward_label: str


@dataclass
class ChosenStep:
    """keep_best: why `model/` holds the adapter of step `step` rather than of the last step."""

    step: int
    rule: str  # the rule that chose it, in words
    figures: dict[str, float]  # its held-out figures (heldout_*)
    start: dict[str, float]  # the starting summarizer's, which the rule compares with
    last_step: int  # the run's last step; its adapter is in steps/<last_step>/


@dataclass
class AdapterInfo:
    """What `model/` holds, written next to the adapter as adapter_info.json."""

    base_model: str
    summarization_adapter: str
    reward_model: str
    reward_label: str
    rank: int
    ppo_steps: int  # the PPO steps the adapter had (the chosen step, with keep_best)
    chosen: ChosenStep | None = None


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """`torch.save` through a Python file write, so a full disk raises OSError (ENOSPC), not
    the RuntimeError of torch's own file writer."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    Path(path).write_bytes(buffer.getvalue())


def save_adapter(
    out_dir: Path,
    policy,
    summarization_dir: Path,
    provenance: Provenance,
    ppo_steps: int,
    chosen: ChosenStep | None = None,
) -> AdapterInfo:
    """The combined adapter (PEFT format) and its adapter_info.json: a loadable adapter."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config, weights = combined_adapter(summarization_dir, policy.pretrained_model)
    info = AdapterInfo(**asdict(provenance), rank=config.r, ppo_steps=ppo_steps, chosen=chosen)
    config.save_pretrained(str(out_dir))
    save_tensors(weights, out_dir / ADAPTER_WEIGHTS)
    (out_dir / ADAPTER_INFO).write_text(json.dumps(asdict(info), indent=2))
    return info


def save_detox_model(
    out_dir: Path,
    policy,
    tokenizer,
    summarization_dir: Path,
    provenance: Provenance,
    ppo_steps: int,
    chosen: ChosenStep | None = None,
) -> AdapterInfo:
    """Write model/: the combined adapter, value head, tokenizer, info and README."""
    info = save_adapter(out_dir, policy, summarization_dir, provenance, ppo_steps, chosen)
    save_tensors({k: v.float() for k, v in policy.v_head.state_dict().items()}, out_dir / VALUE_HEAD_WEIGHTS)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "README.md").write_text(MODEL_README.format(base=info.base_model, rank=info.rank))
    return info


def publish_detox_model(
    model_dir: Path,
    policy,
    tokenizer,
    summarization_dir: Path,
    provenance: Provenance,
    ppo_steps: int,
    kept_in: Path,
    chosen: ChosenStep | None = None,
) -> AdapterInfo:
    """Write model/ whole or not at all: the detoxified adapter and the adapters kept at steps up
    to `ppo_steps` (found under `kept_in`, the checkpoints folder), staged inside it (so each move
    is a rename, even where model/ is a file system of its own), published. With `chosen`
    (keep_best), the policy holds the weights of step `chosen.step`."""
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    adapter_step = chosen.step if chosen else ppo_steps
    with writing("the trained model", Path(model_dir)):
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
        try:
            info = save_detox_model(
                staging, policy, tokenizer, summarization_dir, provenance, adapter_step, chosen
            )
            for step, folder in step_adapters(kept_in).items():
                if step <= ppo_steps:
                    shutil.copytree(folder, staging / STEPS_DIR / str(step))
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        publish(staging, Path(model_dir))
    return info


@dataclass
class AdapterKeeper:
    """Keeps a loadable adapter every `every` PPO steps (0 = never) under `folder`/steps/<n>."""

    folder: Path
    every: int
    policy: object
    summarization_dir: Path
    provenance: Provenance

    def __call__(self, step: int) -> None:
        if self.every and step % self.every == 0:
            self.save(step)

    def save(self, step: int) -> None:
        """The policy's adapter as that of `step`, whatever the cadence."""
        target = Path(self.folder) / STEPS_DIR / str(step)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Staged and renamed: `step_adapters` never lists half an adapter.
        with writing(f"the adapter kept at step {step}", target):
            staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
            try:
                save_adapter(staging, self.policy, self.summarization_dir, self.provenance, step)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)


def read_adapter_info(folder: Path) -> dict | None:
    """adapter_info.json of a trained adapter, or None for one this project did not write."""
    path = Path(folder) / ADAPTER_INFO
    return json.loads(path.read_text()) if path.is_file() else None


STEPS_DIR = "steps"  # model/steps/<n>/: the adapter after PPO step n (`save_adapter_every`)


def step_adapters(folder: Path) -> dict[int, Path]:
    """The adapters a train job kept at chosen steps, by step, under `folder`/steps/ (its model/
    folder, or its checkpoints folder while it trains)."""
    folder = Path(folder) / STEPS_DIR
    if not folder.is_dir():
        return {}
    found = {int(p.name): p for p in folder.iterdir() if p.name.isdigit() and (p / ADAPTER_CONFIG).is_file()}
    return dict(sorted(found.items()))


MODEL_README = """# Detoxified FLAN-T5 summarizer (LoRA adapter)

This folder is a PEFT LoRA adapter (rank {rank}) for `{base}`. It already
contains the dialogue-summarization adapter the training started from, plus
the PPO detoxification update, so it applies directly to the base model:

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from peft import PeftModel

base = AutoModelForSeq2SeqLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```

`value_head.bin` is PPO's value head (only needed to continue PPO training);
`adapter_info.json` records the base model, starting adapter, steps and reward model, and,
when the training kept its best step (`keep_best`), which step this is, by what rule and its
held-out figures. `steps/<n>/`, when present, holds the same kind of adapter after PPO step n.
"""
