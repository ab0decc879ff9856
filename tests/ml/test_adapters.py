import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.paths import ADAPTER_WEIGHTS
from flan_t5_detox.ml.adapters import (
    AdapterKeeper,
    Provenance,
    load_merged,
    publish_detox_model,
    read_lora_config,
    save_detox_model,
    step_adapters,
)
from tests.helpers import tiny_config, tiny_splits, tiny_trainer


def test_saved_adapter_loads_the_documented_way_and_matches_the_policy(tiny_models, tmp_path):
    config = tiny_config(learning_rate=5e-3)
    trainer = tiny_trainer(tiny_models, config)
    trainer.run_step()  # make the detox adapter non-zero
    detox_b = [p for n, p in trainer.policy.named_parameters() if "lora_B" in n]
    assert max(float(p.abs().max()) for p in detox_b) > 0

    provenance = Provenance("google/flan-t5-base", "channel:peft_checkpoint", "reward", "nothate")
    info = save_detox_model(
        tmp_path / "model", trainer.policy, trainer.tokenizer, tiny_models.peft_checkpoint, provenance, 1
    )
    written = json.loads((tmp_path / "model" / "adapter_info.json").read_text())
    assert written["ppo_steps"] == 1 and written["base_model"] == "google/flan-t5-base"
    # The rank is the saved adapter's own: summarization + detox ranks, concatenated.
    saved_rank = read_lora_config(tmp_path / "model").r
    assert written["rank"] == info.rank == saved_rank == 2 * read_lora_config(tiny_models.peft_checkpoint).r

    # Documented way: stock peft on the plain base model.
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.base_model)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "model")).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    enc = tokenizer([p.prompt for p in tiny_splits(config).test[:4]], return_tensors="pt", padding=True)
    decoder = torch.tensor([[0, 5, 6, 7]] * 4)
    with torch.no_grad():
        expected = trainer.policy.pretrained_model(**enc, decoder_input_ids=decoder).logits
        got = loaded(**enc, decoder_input_ids=decoder).logits
        ours = load_merged(tiny_models.base_model, tmp_path / "model")(**enc, decoder_input_ids=decoder)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.logits, expected, atol=1e-4, rtol=1e-4)
    assert loaded.generate(**enc, max_new_tokens=5).shape[0] == 4


def test_adapter_that_does_not_fit_the_base_is_a_clear_error(tiny_models, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(
        (tiny_models.peft_checkpoint / "adapter_config.json").read_text()
    )
    weights = torch.load(tiny_models.peft_checkpoint / ADAPTER_WEIGHTS, weights_only=True)
    torch.save(
        {k: torch.zeros(v.shape[0] + 1, v.shape[1]) for k, v in weights.items()}, bad / "adapter_model.bin"
    )
    with pytest.raises(JobInputError, match="does not fit the base model"):
        load_merged(tiny_models.base_model, bad)
    with pytest.raises(JobInputError, match="adapter_config.json is missing"):
        load_merged(tiny_models.base_model, tmp_path)


def test_a_damaged_adapter_file_or_foreign_target_modules_get_a_reason(tiny_models, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((tiny_models.peft_checkpoint / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps(config))
    weights = (tiny_models.peft_checkpoint / ADAPTER_WEIGHTS).read_bytes()
    (bad / ADAPTER_WEIGHTS).write_bytes(weights[: len(weights) // 3])
    with pytest.raises(
        JobInputError, match="adapter's weights file .* is damaged or not a weights file"
    ) as caught:
        load_merged(tiny_models.base_model, bad)
    assert "weights_only" not in str(caught.value) and "Errno" not in str(caught.value)
    (bad / ADAPTER_WEIGHTS).write_bytes(weights)
    (bad / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "v_proj"]}))
    with pytest.raises(
        JobInputError, match=r"targets modules \['q_proj', 'v_proj'\] that the base model does not"
    ):
        load_merged(tiny_models.base_model, bad)


def test_kept_adapters_every_n_steps_and_model_published_whole_with_those_up_to_its_step(
    tiny_models, tmp_path
):
    trainer = tiny_trainer(tiny_models, tiny_config())
    provenance = Provenance("google/flan-t5-base", "channel:peft_checkpoint", "reward", "nothate")
    checkpoints = tmp_path / "checkpoints"
    keep = AdapterKeeper(checkpoints, 2, trainer.policy, tiny_models.peft_checkpoint, provenance)
    for step in range(1, 6):
        keep(step)
    assert list(step_adapters(checkpoints)) == [2, 4]
    AdapterKeeper(tmp_path / "never", 0, trainer.policy, tiny_models.peft_checkpoint, provenance)(4)
    assert not (tmp_path / "never").exists()

    model_dir = tmp_path / "model"
    info = publish_detox_model(
        model_dir, trainer.policy, trainer.tokenizer, tiny_models.peft_checkpoint, provenance, 3, checkpoints
    )
    assert info.ppo_steps == 3 and list(step_adapters(model_dir)) == [2]  # step 4 is past this model's
    assert (model_dir / ADAPTER_WEIGHTS).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "model"]  # no staging left


def test_an_adapter_kept_on_a_full_disk_fails_clearly_and_leaves_no_half_adapter(tiny_models, tmp_path):
    """checkpoints/ on a real 64 kB tmpfs (CI runs as root; skipped elsewhere without root): a
    kept adapter here is about 110 kB."""
    from flan_t5_detox.contract.disk import DiskFull
    from tests.filesystems import size_limited

    trainer = tiny_trainer(tiny_models, tiny_config())
    provenance = Provenance("google/flan-t5-base", "channel:peft_checkpoint", "reward", "nothate")
    with size_limited(tmp_path / "checkpoints", "64k") as checkpoints:
        keep = AdapterKeeper(checkpoints, 1, trainer.policy, tiny_models.peft_checkpoint, provenance)
        with pytest.raises(DiskFull, match=r"cannot write the adapter kept at step 1 to .*steps/1 \("):
            keep(1)
        assert step_adapters(checkpoints) == {} and list((checkpoints / "steps").iterdir()) == []
