import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from trl import AutoModelForSeq2SeqLMWithValueHead, PPOTrainer, create_reference_model

from flan_t5_detox import models
from flan_t5_detox.contract import JobInputError
from flan_t5_detox.generation import LengthSampler, SamplingSettings, generate
from flan_t5_detox.ppo import ppo_config
from tests.helpers import tiny_config, tiny_splits, tiny_trainer


def _step0_kl(trainer_trl, policy, tokenizer, queries):
    torch.manual_seed(0)
    responses = generate(
        policy, tokenizer, queries, LengthSampler(8, 24, 0).sample(len(queries)), SamplingSettings()
    )
    stats = trainer_trl.step(queries, responses, [torch.tensor(0.0)] * len(queries))
    return float(stats["objective/kl"])


def test_kl_is_zero_at_step_zero_with_a_trained_adapter(tiny_models):
    """Ours: reference == starting policy. The notebook's setup (train the summarization adapter itself,
    trl disables it for the reference) already has a large KL at step 0 with the same adapter."""
    lora = models.read_lora_config(tiny_models.peft_checkpoint)
    weights = torch.load(tiny_models.peft_checkpoint / models.ADAPTER_WEIGHTS, weights_only=True)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 1e-3 for k, v in weights.items()), (
        "adapter untrained"
    )

    config = tiny_config()
    trainer = tiny_trainer(tiny_models, config)
    queries = trainer.query_ids[: config.batch_size]
    ours = _step0_kl(trainer.trl, trainer.policy, trainer.tokenizer, queries)

    # The notebook's construction, on the same tiny models.
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.base_model)
    peft_model = PeftModel.from_pretrained(
        base, str(tiny_models.peft_checkpoint), lora_config=lora, is_trainable=True
    )
    ppo_model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(peft_model, is_trainable=True)
    models.disable_dropout(ppo_model)  # isolate the reference defect from dropout noise
    notebook = PPOTrainer(
        config=ppo_config(config),
        model=ppo_model,
        ref_model=create_reference_model(ppo_model),
        tokenizer=trainer.tokenizer,
    )
    theirs = _step0_kl(notebook, ppo_model, trainer.tokenizer, queries)
    print(f"step-0 KL: ours={ours:.3g} notebook={theirs:.3g}")
    assert abs(ours) < 1e-4
    assert theirs > 0.5


def test_saved_adapter_loads_the_documented_way_and_matches_the_policy(tiny_models, tmp_path):
    config = tiny_config(learning_rate=5e-3)
    trainer = tiny_trainer(tiny_models, config)
    trainer.run_step()  # make the detox adapter non-zero
    detox_b = [p for n, p in trainer.policy.named_parameters() if "lora_B" in n]
    assert max(float(p.abs().max()) for p in detox_b) > 0

    info = models.AdapterInfo("google/flan-t5-base", "channel", 16, 1, "reward", "nothate")
    models.save_detox_model(
        tmp_path / "model", trainer.policy, trainer.tokenizer, tiny_models.peft_checkpoint, info
    )
    assert json.loads((tmp_path / "model" / "adapter_info.json").read_text())["ppo_steps"] == 1

    # Documented way: stock peft on the plain base model.
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.base_model)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "model")).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    enc = tokenizer([p.prompt for p in tiny_splits(config).test[:4]], return_tensors="pt", padding=True)
    decoder = torch.tensor([[0, 5, 6, 7]] * 4)
    with torch.no_grad():
        expected = trainer.policy.pretrained_model(**enc, decoder_input_ids=decoder).logits
        got = loaded(**enc, decoder_input_ids=decoder).logits
        ours = models.load_detoxified(tiny_models.base_model, tmp_path / "model")(
            **enc, decoder_input_ids=decoder
        )
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.logits, expected, atol=1e-4, rtol=1e-4)
    assert loaded.generate(**enc, max_new_tokens=5).shape[0] == 4


def test_adapter_that_does_not_fit_the_base_is_a_clear_error(tiny_models, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(
        (tiny_models.peft_checkpoint / "adapter_config.json").read_text()
    )
    weights = torch.load(tiny_models.peft_checkpoint / models.ADAPTER_WEIGHTS, weights_only=True)
    torch.save(
        {k: torch.zeros(v.shape[0] + 1, v.shape[1]) for k, v in weights.items()}, bad / "adapter_model.bin"
    )
    with pytest.raises(JobInputError, match="does not fit the base model"):
        models.load_summarizer(tiny_models.base_model, bad)
    with pytest.raises(JobInputError, match="adapter_config.json is missing"):
        models.load_summarizer(tiny_models.base_model, tmp_path)


def test_dtype_follows_the_request_and_cpu_capability(monkeypatch):
    assert models.pick_dtype("float32") is torch.float32
    assert models.pick_dtype("bfloat16") is torch.bfloat16
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx512f", "avx2"})  # Skylake/Cascade Lake (ml.m5)
    assert models.pick_dtype("auto") is torch.float32
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert models.pick_dtype("auto") is torch.bfloat16


def test_mkl_gets_its_fast_kernels_on_amd_only():
    zen4 = models.AVX512_CORE | {"avx2", "fma", "avx512_bf16"}
    assert models.mkl_cpu_type("AuthenticAMD", zen4) == "7"
    assert models.mkl_cpu_type("AuthenticAMD", {"avx", "avx2", "fma"}) == "5"  # Zen 2/3
    assert models.mkl_cpu_type("AuthenticAMD", {"avx", "sse4_2"}) is None
    assert models.mkl_cpu_type("GenuineIntel", zen4) is None  # MKL picks well on Intel


def test_the_seed_fixes_the_fresh_adapter_and_value_head(tiny_models):
    def trainable(seed):
        policy = models.build_policy(
            models.load_summarizer(tiny_models.base_model, tiny_models.peft_checkpoint),
            models.read_lora_config(tiny_models.peft_checkpoint),
            seed,
        )
        return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}

    first, again, other = trainable(1), trainable(1), trainable(2)
    assert any("lora_A" in n for n in first) and any("v_head" in n for n in first)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)


def test_bf16_policy_keeps_trainable_weights_and_logits_in_fp32(tiny_models):
    policy = models.build_policy(
        models.load_summarizer(tiny_models.base_model, tiny_models.peft_checkpoint, torch.bfloat16),
        models.read_lora_config(tiny_models.peft_checkpoint),
        seed=0,
    )
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    ids = torch.tensor([[5, 6, 7, 1]])
    logits, _, values = policy(input_ids=ids, decoder_input_ids=torch.tensor([[0, 5]]))
    assert logits.dtype == torch.float32 and values.dtype == torch.float32
