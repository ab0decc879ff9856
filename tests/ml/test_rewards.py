import pytest
import torch

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.ml.rewards import RewardModel, length_batches, reward_text


@pytest.mark.numerics
def test_reward_is_the_named_logit_and_toxicity_the_softmax(tiny_models):
    model = RewardModel(tiny_models.reward_model, reward_label="nothate", batch_size=2)
    texts = ["Tom buys a coat.", "you stupid idiot", "Mary and Sam plan a trip to Paris on Friday."]
    enc = model.tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        logits = model.model(**enc).logits
    nothate = model.model.config.label2id["nothate"]
    hate = model.model.config.label2id["hate"]
    scores = model.score(texts)
    torch.testing.assert_close(scores.reward, logits[:, nothate], atol=1e-5, rtol=1e-5)
    tox = scores.probabilities[:, model.index_of("hate")]
    torch.testing.assert_close(tox, logits.softmax(-1)[:, hate], atol=1e-6, rtol=1e-5)
    # The tiny classifier learned its job: hostile words are more toxic.
    assert tox[1] > 0.5 > tox[0]


def test_a_rollout_is_rewarded_on_its_reward_text(tiny_models):
    model = RewardModel(tiny_models.reward_model)
    queries, responses = ["Summarize: Tom buys a coat.", "Summarize: a trip."], ["you idiot", "They travel."]
    assert reward_text(queries[0], responses[0]) == "Summarize: Tom buys a coat. you idiot"
    assert reward_text(queries[0], responses[0], "query_response") == "Summarize: Tom buys a coat. you idiot"
    assert reward_text(queries[0], responses[0], "response") == "you idiot"
    with pytest.raises(ValueError, match="reward_input"):
        reward_text(queries[0], responses[0], "dialogue")
    expected = model.score([reward_text(q, r) for q, r in zip(queries, responses)]).reward
    torch.testing.assert_close(model.rewards(queries, responses), expected)
    alone = RewardModel(tiny_models.reward_model, reward_input="response")
    torch.testing.assert_close(alone.rewards(queries, responses), model.score(responses).reward)
    assert not torch.allclose(alone.rewards(queries, responses), expected)


def test_label_is_chosen_by_name_not_index(tiny_models):
    assert RewardModel(tiny_models.reward_model, reward_label="HATE").reward_index == 1
    with pytest.raises(JobInputError, match="no label 'toxic'.*hate.*nothate"):
        RewardModel(tiny_models.reward_model, reward_label="toxic")


def test_batches_follow_length_and_keep_the_input_order(tiny_models):
    lengths = [50, 3, 400, 7, 60, 5, 380]
    batches = length_batches(lengths, batch_size=3, batch_tokens=780)
    assert sorted(i for rows in batches for i in rows) == list(range(len(lengths)))
    assert batches == [[1, 5, 3], [0, 4], [6], [2]]  # 3 rows at most; 380 and 400 padded: 800 > 780
    assert length_batches([900], 16, 512) == [[0]]  # a row longer than the budget still runs

    texts = ["Tom buys a coat.", "you stupid idiot " * 20, "hi", "Mary and Sam plan a trip to Paris."]
    one_by_one = RewardModel(tiny_models.reward_model, batch_size=1).score(texts)
    batched = RewardModel(tiny_models.reward_model, batch_size=3, batch_tokens=64).score(texts)
    torch.testing.assert_close(batched.reward, one_by_one.reward, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.probabilities, one_by_one.probabilities, atol=1e-6, rtol=1e-5)
    assert RewardModel(tiny_models.reward_model).score([]).reward.shape == (0,)
