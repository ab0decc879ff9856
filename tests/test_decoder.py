import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from flan_t5_detox import decoder as decoder_module
from flan_t5_detox import models
from flan_t5_detox.decoder import IncrementalDecoder, weight_first_products


def _queries(tokenizer):
    texts = ["Summarize: Tom buys a coat and a hat.", "Summarize: Ann calls.", "Summarize: Bob asks Ann out."]
    return tokenizer(texts, padding=True, return_tensors="pt")


def _policy(tiny_models, dtype=torch.float32):
    policy = models.build_policy(
        models.load_summarizer(tiny_models.base_model, tiny_models.peft_checkpoint, dtype),
        models.read_lora_config(tiny_models.peft_checkpoint),
        seed=0,
    )
    with torch.no_grad():  # a trained-looking detox adapter, so LoRA really takes part
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return policy.pretrained_model


def _incremental_logits(seq2seq, enc, decoder_ids, drop_after=None, keep=None):
    """Logits at every position, feeding one token per step; optionally drop rows midway."""
    encoded = seq2seq.get_encoder()(**enc).last_hidden_state
    decoder = IncrementalDecoder(seq2seq, encoded, enc["attention_mask"], decoder_ids.shape[1])
    rows, steps = torch.arange(len(decoder_ids)), []
    for t in range(decoder_ids.shape[1]):
        if t == drop_after:
            decoder.keep(keep)
            rows = rows[keep]
        steps.append((rows, decoder.step(decoder_ids[rows, t])))
    return steps


def _assert_matches_full_forward(seq2seq, enc, decoder_ids, tol, scaled=False, **drop):
    """Every step's logits equal the full forward's; with `scaled`, the tolerance is a fraction of
    the largest logit (for low precision, where one rounding step grows with the value)."""
    with torch.no_grad():
        full = seq2seq(**enc, decoder_input_ids=decoder_ids).logits.float()
    atol, rtol = (tol * float(full.abs().max()), 0.0) if scaled else (tol, tol)
    for t, (rows, logits) in enumerate(_incremental_logits(seq2seq, enc, decoder_ids, **drop)):
        torch.testing.assert_close(logits.float(), full[rows, t], atol=atol, rtol=rtol)


@pytest.mark.parametrize("drop", [{}, {"drop_after": 4, "keep": torch.tensor([0, 2])}])
def test_steps_match_the_full_forward_of_the_policy_with_its_adapter(tiny_models, drop):
    policy = _policy(tiny_models).eval()
    tokenizer = models.load_tokenizer(tiny_models.base_model)
    decoder_ids = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.randint(2, 50, (3, 9))], dim=1)
    _assert_matches_full_forward(policy, _queries(tokenizer), decoder_ids, 1e-4, **drop)


def test_steps_match_a_plain_t5_with_tied_embeddings(tiny_models):
    """The reference model is a plain T5; tied heads rescale the last hidden state."""
    config = T5Config(
        vocab_size=60, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4, feed_forward_proj="relu",
        relative_attention_num_buckets=8, relative_attention_max_distance=16, tie_word_embeddings=True,
        decoder_start_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config).eval()
    enc = {
        "input_ids": torch.randint(2, 60, (2, 7)),
        "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3]),
    }
    decoder_ids = torch.randint(2, 60, (2, 30))  # longer than max_distance: far buckets are used
    _assert_matches_full_forward(model, enc, decoder_ids, 1e-4)


def test_steps_match_in_bfloat16(tiny_models):
    policy = _policy(tiny_models, torch.bfloat16).eval()
    tokenizer = models.load_tokenizer(tiny_models.base_model)
    decoder_ids = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.randint(2, 50, (3, 6))], dim=1)
    # bf16 keeps 8 significant bits and the two paths round at different points (native bf16
    # kernels differ again): at logits near 20 one rounding step is 0.125, so the tolerance
    # scales with the logits. A wrong cache, bias or mask is off by the logits' own size.
    _assert_matches_full_forward(policy, _queries(tokenizer), decoder_ids, 5e-2, scaled=True)


def test_weight_first_products_give_the_same_steps_and_are_undone(tiny_models, monkeypatch):
    """With every plain projection taken as W @ x^T (the threshold lowered to one row, so the
    tiny batch uses it), the steps still match the full forward taken the usual way; LoRA
    layers keep their own forward, and after the block every module has its own again."""
    policy = _policy(tiny_models).eval()
    enc = _queries(models.load_tokenizer(tiny_models.base_model))
    t5 = policy.get_base_model()
    decoder_ids = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.randint(2, 50, (3, 9))], dim=1)
    with torch.no_grad():
        full = policy(**enc, decoder_input_ids=decoder_ids).logits
    monkeypatch.setattr(decoder_module, "WEIGHT_FIRST_MIN_ROWS", 1)
    calls = []
    original = decoder_module._weight_first_linear
    monkeypatch.setattr(
        decoder_module, "_weight_first_linear", lambda m, x: calls.append(m) or original(m, x)
    )
    lora_q = t5.decoder.block[0].layer[0].SelfAttention.q
    with weight_first_products(t5.decoder, t5.lm_head):
        assert type(lora_q) is not torch.nn.Linear and "forward" not in vars(lora_q)
        steps = _incremental_logits(policy, enc, decoder_ids)
    for t, (rows, logits) in enumerate(steps):
        torch.testing.assert_close(logits, full[rows, t], atol=1e-4, rtol=1e-4)
    assert t5.lm_head in calls and t5.decoder.block[0].layer[2].DenseReluDense.wo in calls
    assert all(type(m) is torch.nn.Linear for m in calls)
    assert all("forward" not in vars(m) for m in t5.modules())
