import torch

from flan_t5_detox.ml.generation import (
    LengthSampler,
    SamplingSettings,
    detokenize,
    draw_tokens,
    generate,
    response_logprobs,
    run_encoder,
    stream_seed,
)
from tests.helpers import tiny_config, tiny_trainer


def test_length_sampler_is_seeded_and_in_range():
    a, b = LengthSampler(100, 400, 3).sample(50), LengthSampler(100, 400, 3).sample(50)
    assert a == b and all(100 <= n < 400 for n in a)


def test_batched_generation_has_no_pads_after_eos_and_respects_budgets(tiny_models):
    trainer = tiny_trainer(tiny_models, tiny_config())
    budgets = [3, 30, 12, 7, 30, 5, 9, 20]
    torch.manual_seed(0)
    responses = generate(
        trainer.policy, trainer.tokenizer, trainer.query_ids[:8], budgets, SamplingSettings(2, 0, 1)
    )
    eos, pad = trainer.tokenizer.eos_token_id, trainer.tokenizer.pad_token_id
    for response, budget in zip(responses, budgets):
        assert response[0] == pad  # decoder start token
        assert len(response) - 1 <= budget
        body = response[1:]
        assert pad not in body.tolist()
        assert eos not in body[:-1].tolist()  # EOS, if any, is last


def test_draw_samples_the_given_distribution_and_never_a_zero_probability_token():

    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    torch.manual_seed(0)
    draws = torch.cat([draw_tokens(probs) for _ in range(20000)], dim=1)
    first = torch.bincount(draws[0], minlength=5).float() / draws.shape[1]
    assert first[1] == 0 and first[4] == 0
    torch.testing.assert_close(first, probs[0], atol=0.015, rtol=0)  # 4+ standard errors
    assert (draws[1] == 4).all()


def test_encoder_states_computed_once_give_the_same_responses(tiny_models):
    """`run_encoder` then `generate(encoder_states=...)`, as a PPO step does, samples exactly what
    `generate` samples with its own encoder pass, in one batch or several."""
    trainer = tiny_trainer(tiny_models, tiny_config())
    queries, budgets = trainer.query_ids[:6], [9, 4, 12, 7, 12, 5]
    for batch_size in (0, 4):
        torch.manual_seed(0)
        own = generate(trainer.policy, trainer.tokenizer, queries, budgets, SamplingSettings(), batch_size)
        states = run_encoder(trainer.policy, trainer.tokenizer, queries, batch_size)
        assert [len(s) for s in states] == [len(q) for q in queries]
        torch.manual_seed(0)
        given = generate(
            trainer.policy, trainer.tokenizer, queries, budgets, SamplingSettings(), batch_size, states
        )
        assert all(torch.equal(a, b) for a, b in zip(own, given))


def test_with_row_seeds_a_response_depends_on_nothing_else_in_its_batch(tiny_models):
    """Own random streams: the same responses in one batch, in batches of 3, or alone, and
    whatever the global stream holds; without them the split changes what is drawn."""
    trainer = tiny_trainer(tiny_models, tiny_config())
    queries, budgets = trainer.query_ids[:6], [30, 4, 30, 7, 30, 5]
    seeds = [stream_seed(42, 1, row) for row in range(6)]

    def sample(batch_size, rows=range(6), global_seed=0):
        torch.manual_seed(global_seed)
        return generate(
            trainer.policy, trainer.tokenizer, [queries[i] for i in rows], [budgets[i] for i in rows],
            SamplingSettings(), batch_size, row_seeds=[seeds[i] for i in rows],
        )  # fmt: skip

    whole = sample(0)
    assert all(torch.equal(a, b) for a, b in zip(whole, sample(3, global_seed=7)))
    assert torch.equal(sample(0, rows=[4])[0], whole[4])
    assert len({tuple(r.tolist()) for r in whole}) > 1  # the streams differ from row to row
    assert stream_seed(42, 1, 2) != stream_seed(42, 2, 1)


def test_detokenize_gives_each_response_its_text_without_special_tokens(tiny_models):
    trainer = tiny_trainer(tiny_models, tiny_config())
    tokenizer = trainer.tokenizer
    texts = ["the heater is repaired", "see you on Wednesday"]
    bodies = [tokenizer(t).input_ids for t in texts]  # each ends with EOS
    assert all(b[-1] == tokenizer.eos_token_id for b in bodies)
    responses = [torch.tensor([tokenizer.pad_token_id, *b]) for b in bodies]  # decoder start first
    texts = detokenize(tokenizer, responses)
    assert texts == [tokenizer.decode(b[:-1]) for b in bodies]
    assert all(t and "<pad>" not in t and "</s>" not in t for t in texts)


def test_response_logprobs_are_the_models_teacher_forced_log_softmax_row_by_row(tiny_models):
    """Each response's token log-probs equal log_softmax of the model's own logits on that row alone,
    whatever else is in the batch (padding is masked)."""
    trainer = tiny_trainer(tiny_models, tiny_config())
    model, tokenizer = trainer.policy, trainer.tokenizer
    queries = trainer.query_ids[:4]
    responses = generate(
        model, tokenizer, queries, [5, 20, 9, 14], SamplingSettings(2, 0, 1), row_seeds=[1, 2, 3, 4]
    )
    batched = response_logprobs(model, tokenizer, queries, responses)
    seq2seq = model.pretrained_model if hasattr(model, "v_head") else model
    for query, response, got in zip(queries, responses, batched):
        with torch.no_grad():
            logits = seq2seq(input_ids=query[None], decoder_input_ids=response[None, :-1]).logits[0]
        expected = logits.log_softmax(-1).gather(1, response[1:, None])[:, 0]
        assert got.shape == (len(response) - 1,)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
