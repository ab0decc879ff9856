import pytest
import torch

from flan_t5_detox.contract import JobInputError
from flan_t5_detox.rewards import RewardModel


def test_reward_is_the_named_logit_and_toxicity_the_softmax(tiny_models):
    model = RewardModel(tiny_models.reward_model, reward_label="nothate", batch_size=2)
    texts = ["Tom buys a coat.", "you stupid idiot", "Mary and Sam plan a trip to Paris on Friday."]
    enc = model.tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        logits = model.model(**enc).logits
    nothate = model.model.config.label2id["nothate"]
    hate = model.model.config.label2id["hate"]
    torch.testing.assert_close(model.rewards(texts), logits[:, nothate], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        model.toxicity(texts, "hate"), logits.softmax(-1)[:, hate], atol=1e-6, rtol=1e-5
    )
    # The tiny classifier learned its job: hostile words are more toxic.
    tox = model.toxicity(texts)
    assert tox[1] > 0.5 > tox[0]


def test_label_is_chosen_by_name_not_index(tiny_models):
    assert RewardModel(tiny_models.reward_model, reward_label="HATE").reward_index == 1
    with pytest.raises(JobInputError, match="no label 'toxic'.*hate.*nothate"):
        RewardModel(tiny_models.reward_model, reward_label="toxic")
