import copy

import pytest
import torch
from peft.tuners.lora import LoraLayer
from transformers import T5Config, T5ForConditionalGeneration

from flan_t5_detox.fast import decoder as decoder_module
from flan_t5_detox.fast.decoder import IncrementalDecoder, compaction_order, decoding_products
from flan_t5_detox.ml.adapters import load_merged, read_lora_config
from flan_t5_detox.ml.loading import load_tokenizer
from flan_t5_detox.ml.policy import build_policy


def _queries(tokenizer):
    texts = ["Summarize: Tom buys a coat and a hat.", "Summarize: Ann calls.", "Summarize: Bob asks Ann out."]
    return tokenizer(texts, padding=True, return_tensors="pt")


def _policy(tiny_models, dtype=torch.float32):
    policy = build_policy(
        load_merged(tiny_models.base_model, tiny_models.peft_checkpoint, dtype),
        read_lora_config(tiny_models.peft_checkpoint),
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


def test_compaction_keeps_places_and_fills_holes_from_the_tail():
    finished = torch.tensor([False, True, False, True, False, False, True])
    assert compaction_order(finished).tolist() == [0, 4, 2, 5]
    assert compaction_order(torch.tensor([True, False, False])).tolist() == [2, 1]
    assert compaction_order(torch.tensor([False, False, True])).tolist() == [0, 1]
    assert compaction_order(torch.tensor([True, True])).tolist() == []


def test_keep_refuses_an_order_that_would_overwrite_a_row_still_to_move(tiny_models):
    policy = _policy(tiny_models).eval()
    enc = _queries(load_tokenizer(tiny_models.base_model))
    encoded = policy.get_encoder()(**enc).last_hidden_state
    decoder = IncrementalDecoder(policy, encoded, enc["attention_mask"], 4)
    decoder.step(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="from the tail"):
        decoder.keep(torch.tensor([1, 0]))


@pytest.mark.parametrize(
    "drop",
    [
        {},
        {"drop_after": 4, "keep": compaction_order(torch.tensor([False, True, False]))},  # truncates
        {"drop_after": 4, "keep": compaction_order(torch.tensor([True, False, False]))},  # row 2 moves
    ],
)
def test_steps_match_the_full_forward_of_the_policy_with_its_adapter(tiny_models, drop):
    policy = _policy(tiny_models).eval()
    tokenizer = load_tokenizer(tiny_models.base_model)
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


@pytest.mark.numerics
def test_steps_in_bfloat16_are_as_close_to_float32_as_the_full_forward(tiny_models):
    """bf16 keeps 8 significant bits, and the incremental and full paths round at different
    points, so they cannot agree to a fixed tolerance on every CPU (native bf16 kernels round
    differently again). Both are measured against one truth instead: the same bf16 weights run
    in float32. The incremental path must be no further from it than the full forward is, within
    a factor of 2 on the RMS error. A wrong cache, bias or mask is off by the logits' own size."""
    policy = _policy(tiny_models, torch.bfloat16).eval()
    exact = copy.deepcopy(policy).float()  # the same (bf16-rounded) weights, float32 arithmetic
    enc = _queries(load_tokenizer(tiny_models.base_model))
    decoder_ids = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.randint(2, 50, (3, 6))], dim=1)
    with torch.no_grad():
        truth = exact(**enc, decoder_input_ids=decoder_ids).logits
        full = policy(**enc, decoder_input_ids=decoder_ids).logits.float()
    steps = _incremental_logits(policy, enc, decoder_ids)
    incremental = torch.stack([logits.float() for _, logits in steps], dim=1)

    def rms(error):
        return float(error.pow(2).mean().sqrt())

    full_error, step_error = rms(full - truth), rms(incremental - truth)
    print(
        f"bf16 RMS error: full forward {full_error:.4f}, steps {step_error:.4f}, of logits {rms(truth):.2f}"
    )
    assert 0 < full_error < 0.2 * rms(truth)  # bf16 really ran, and is close
    assert step_error <= 2 * full_error


def _lora_layers(t5):
    return [m for m in t5.decoder.modules() if isinstance(m, LoraLayer)]


@pytest.mark.parametrize("weight_first_min_rows", [1, 10**6], ids=["weight first", "input first"])
def test_decoding_products_give_the_same_steps_and_are_undone(
    tiny_models, monkeypatch, weight_first_min_rows
):
    """Every projection patched (LoRA layers with their merged weight), weight first or input
    first: the steps still match the full forward taken the usual way, and after the block every
    module has its own forward again."""
    policy = _policy(tiny_models).eval()
    enc = _queries(load_tokenizer(tiny_models.base_model))
    t5 = policy.get_base_model()
    decoder_ids = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.randint(2, 50, (3, 9))], dim=1)
    with torch.no_grad():
        full = policy(**enc, decoder_input_ids=decoder_ids).logits
    monkeypatch.setattr(decoder_module, "WEIGHT_FIRST_MIN_ROWS", weight_first_min_rows)
    weights = []
    original = decoder_module._decoding_linear
    monkeypatch.setattr(decoder_module, "_decoding_linear", lambda w, x: weights.append(w) or original(w, x))
    lora_q = t5.decoder.block[0].layer[0].SelfAttention.q
    with decoding_products(t5.decoder, t5.lm_head):
        assert all("forward" in vars(m) for m in _lora_layers(t5))
        steps = _incremental_logits(policy, enc, decoder_ids)
    for t, (rows, logits) in enumerate(steps):
        torch.testing.assert_close(logits, full[rows, t], atol=1e-4, rtol=1e-4)
    assert any(w is t5.lm_head.weight for w in weights)
    assert any(w is t5.decoder.block[0].layer[2].DenseReluDense.wo.weight for w in weights)
    merged_q = [w for w in weights if w.shape == lora_q.weight.shape and not torch.equal(w, lora_q.weight)]
    assert merged_q, "the LoRA layers decode with their merged weight"
    assert all("forward" not in vars(m) for m in t5.modules())


def test_the_decoding_weight_is_what_each_projection_applies(tiny_models):
    policy = _policy(tiny_models).eval()
    t5 = policy.get_base_model()
    lora_v = t5.decoder.block[1].layer[0].SelfAttention.v
    plain = t5.decoder.block[1].layer[0].SelfAttention.k
    lora_v.scaling[lora_v.active_adapter] = 0.37  # alpha / r is 1 in the tiny adapter
    x = torch.randn(3, lora_v.in_features)
    with torch.no_grad():
        torch.testing.assert_close(x @ decoder_module._decoding_weight(lora_v).T, lora_v(x))
        assert decoder_module._decoding_weight(plain) is plain.weight
        with policy.disable_adapter():  # the reference pass: LoRA off, base weight only
            assert decoder_module._decoding_weight(lora_v) is lora_v.weight
        assert decoder_module._decoding_weight(torch.nn.Linear(4, 4, bias=True)) is None
        dropout = lora_v.lora_dropout[lora_v.active_adapter] = torch.nn.Dropout(0.1)
        dropout.train()  # random per call: no single weight stands for it
        assert decoder_module._decoding_weight(lora_v) is None
