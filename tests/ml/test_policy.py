import torch
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM
from trl import AutoModelForSeq2SeqLMWithValueHead, PPOTrainer, create_reference_model

from flan_t5_detox.contract.paths import ADAPTER_WEIGHTS
from flan_t5_detox.ml.adapters import load_merged, read_lora_config
from flan_t5_detox.ml.generation import LengthSampler, SamplingSettings, generate
from flan_t5_detox.ml.policy import build_policy, disable_dropout
from flan_t5_detox.ml.trl_trainer import ppo_config
from tests.helpers import tiny_config, tiny_trainer


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
    lora = read_lora_config(tiny_models.peft_checkpoint)
    weights = torch.load(tiny_models.peft_checkpoint / ADAPTER_WEIGHTS, weights_only=True)
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
    disable_dropout(ppo_model)  # isolate the reference defect from dropout noise
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


def test_the_seed_fixes_the_fresh_adapter_and_value_head(tiny_models):
    def trainable(seed):
        policy = build_policy(
            load_merged(tiny_models.base_model, tiny_models.peft_checkpoint),
            read_lora_config(tiny_models.peft_checkpoint),
            seed,
        )
        return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}

    first, again, other = trainable(1), trainable(1), trainable(2)
    assert any("lora_A" in n for n in first) and any("v_head" in n for n in first)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)


def test_bf16_policy_keeps_trainable_weights_and_logits_in_fp32(tiny_models):
    policy = build_policy(
        load_merged(tiny_models.base_model, tiny_models.peft_checkpoint, torch.bfloat16),
        read_lora_config(tiny_models.peft_checkpoint),
        seed=0,
    )
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    ids = torch.tensor([[5, 6, 7, 1]])
    logits, _, values = policy(input_ids=ids, decoder_input_ids=torch.tensor([[0, 5]]))
    assert logits.dtype == torch.float32 and values.dtype == torch.float32
