"""Loading the summarizer, building the PPO policy, and saving/loading the detox adapter.

The KL reference fix (DESIGN §4, defect 1): trl 0.4.x computes reference
log-probs of a PEFT policy by *disabling the adapter*. If the policy trains the
summarization adapter itself (as the notebook does) the reference becomes bare
FLAN-T5, not the summarizer we start from. We therefore merge the
summarization adapter into the base weights and train a fresh LoRA adapter
(zero-initialised B, so it starts as a no-op) on top. Disabling that adapter
gives exactly the merged summarizer: the reference is the starting policy and
the KL at step 0 is zero.

On save, the fresh adapter and the summarization adapter are concatenated
along the rank dimension into one LoRA adapter that applies to the plain base
model (exact, because LoRA updates add: B1 A1 s1 + B2 A2 s2 = [B1 s1/s, B2 s2/s][A1; A2] s),
so users load it with stock `PeftModel.from_pretrained(base, model_dir)`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, set_peft_model_state_dict
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerBase
from trl import AutoModelForSeq2SeqLMWithValueHead

from .contract import JobInputError

ADAPTER_WEIGHTS = "adapter_model.bin"
ADAPTER_CONFIG = "adapter_config.json"
VALUE_HEAD_WEIGHTS = "value_head.bin"
ADAPTER_INFO = "adapter_info.json"


def _cpuinfo(field: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


def pick_dtype(requested: str = "auto") -> torch.dtype:
    """bf16 only where the CPU computes it natively; emulated bf16 (e.g. ml.m5) is slower than fp32."""
    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if {"avx512_bf16", "amx_bf16"} & cpu_flags() else torch.float32


AVX512_CORE = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def mkl_cpu_type(vendor: str | None = None, flags: set[str] | None = None) -> str | None:
    """The MKL_DEBUG_CPU_TYPE that unlocks MKL's fast kernels on a CPU (default: this one), or
    None to leave MKL be.

    torch 1.13.1 ships MKL 2020.0, which runs slow generic kernels on AMD CPUs whatever their
    SIMD. Forcing its AVX-512 kernels (7) or AVX2 kernels (5) made fp32 GEMMs 5.4x / 2.7x
    faster on an AMD EPYC with AVX-512 (bench/RESULTS.md). Intel CPUs get the right kernels."""
    vendor = _cpuinfo("vendor_id") if vendor is None else vendor
    flags = cpu_flags() if flags is None else flags
    if vendor != "AuthenticAMD":
        return None
    if AVX512_CORE <= flags:
        return "7"
    return "5" if {"avx2", "fma"} <= flags else None


def use_fast_mkl_kernels() -> None:
    """MKL reads the variable at its first call, so call this before any model computes."""
    cpu_type = mkl_cpu_type()
    if cpu_type:
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", cpu_type)


def set_threads(requested: int = 0) -> int:
    """One intra-op thread per CPU this process may run on (cgroup/affinity aware); fast MKL kernels."""
    use_fast_mkl_kernels()
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    count = requested or available
    torch.set_num_threads(count)
    return count


def disable_dropout(model: torch.nn.Module) -> None:
    """Rollouts, reference and PPO passes must see the same deterministic network."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def load_tokenizer(path_or_name: str | Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path_or_name))


def load_base_model(path_or_name: str | Path, dtype: torch.dtype = torch.float32):
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(str(path_or_name), torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise JobInputError(f"cannot load the base model from {path_or_name}: {exc}") from exc
    return model


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


def load_adapter(model, adapter_dir: Path, is_trainable: bool = False) -> PeftModel:
    """Wrap `model` with the LoRA adapter in `adapter_dir`, loading weights with weights_only=True."""
    adapter_dir = Path(adapter_dir)
    config = read_lora_config(adapter_dir)
    config.inference_mode = not is_trainable
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise JobInputError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}")
    weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    peft_model = get_peft_model(model, config)
    # Check every tensor fits before loading: peft would otherwise skip or crash obscurely.
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


def load_summarizer(base_model: str | Path, adapter_dir: Path, dtype: torch.dtype = torch.float32):
    """Base model with the summarization adapter merged into its weights (the starting policy)."""
    base = load_base_model(base_model, torch.float32)  # merge in fp32, cast after
    merged = load_adapter(base, adapter_dir).merge_and_unload()
    return merged.to(dtype)


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


@dataclass
class AdapterInfo:
    """What `model/` holds, written next to the adapter as adapter_info.json."""

    base_model: str
    summarization_adapter: str
    rank: int
    ppo_steps: int
    reward_model: str
    reward_label: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def _lora_state(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() for k, v in peft_model.state_dict().items() if "lora_" in k}


def combined_adapter(summarization_dir: Path, detox_model: PeftModel) -> tuple[LoraConfig, dict]:
    """One LoRA adapter equal to summarization + detox, for the plain base model."""
    summ_config = read_lora_config(summarization_dir)
    summ = torch.load(Path(summarization_dir) / ADAPTER_WEIGHTS, map_location="cpu", weights_only=True)
    detox_config = detox_model.peft_config["default"]
    detox = {k.replace(".default.weight", ".weight"): v for k, v in _lora_state(detox_model).items()}
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


def save_detox_model(
    out_dir: Path,
    policy,
    tokenizer,
    summarization_dir: Path,
    info: AdapterInfo,
) -> None:
    """Write model/: the combined adapter (PEFT format), value head, tokenizer, info and README."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config, weights = combined_adapter(summarization_dir, policy.pretrained_model)
    config.save_pretrained(str(out_dir))
    torch.save(weights, out_dir / ADAPTER_WEIGHTS)
    torch.save({k: v.float() for k, v in policy.v_head.state_dict().items()}, out_dir / VALUE_HEAD_WEIGHTS)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / ADAPTER_INFO).write_text(info.to_json())
    (out_dir / "README.md").write_text(MODEL_README.format(base=info.base_model, rank=info.rank))


def load_detoxified(base_model: str | Path, model_dir: Path, dtype: torch.dtype = torch.float32):
    """The trained summarizer: plain base model + the combined adapter from model/."""
    base = load_base_model(base_model, dtype)
    model = load_adapter(base, model_dir)
    model.eval()
    return model


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
`adapter_info.json` records the base model, starting adapter, steps and reward model.
"""
