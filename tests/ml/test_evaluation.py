"""Before/after measurements on the tiny models: what is scored, with which seed, and how."""

import dataclasses

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM, pipeline

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.settings import EvalConfig
from flan_t5_detox.ml import evaluation
from flan_t5_detox.ml.adapters import Provenance, load_merged, save_detox_model
from flan_t5_detox.ml.data import Example
from flan_t5_detox.ml.loading import load_tokenizer
from flan_t5_detox.ml.rewards import RewardModel
from tests.helpers import tiny_config, tiny_splits, tiny_trainer

CONFIG = EvalConfig(
    max_new_tokens=16, generation_batch_size=4, bootstrap_samples=500, dtype="float32", samples_per_prompt=2
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a busy 2-core box, waiting OpenMP threads cost minutes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)  # the jobs run in-process here set it too


@pytest.fixture(scope="module")
def examples():
    return evaluation.select_examples(tiny_splits(tiny_config()).test, 10)


@pytest.fixture(scope="module")
def trained_adapter(tiny_models, tmp_path_factory):
    """A model/ folder as the train job saves it, after two PPO steps that really move the adapter."""
    trainer = tiny_trainer(tiny_models, tiny_config(learning_rate=3e-3, max_ppo_steps=2))
    trainer.run_step()
    trainer.run_step()
    out = tmp_path_factory.mktemp("model")
    provenance = Provenance("tiny", "tiny", "tiny", "nothate")
    save_detox_model(out, trainer.policy, trainer.tokenizer, tiny_models.peft_checkpoint, provenance, 2)
    return out


@pytest.mark.parametrize("reward_input", ["query_response", "response"])
def test_toxicity_and_reward_are_what_the_notebooks_pipeline_computes(tiny_models, examples, reward_input):
    """Toxicity = softmax P(hate) of the classifier on query + " " + response (the `evaluate` toxicity
    measurement), and on the response alone, whatever the reward reads; reward = the raw `nothate`
    logit of what `reward_input` says. Checked against a transformers pipeline."""
    tokenizer = load_tokenizer(tiny_models.base_model)
    summarizer = load_merged(str(tiny_models.base_model), tiny_models.peft_checkpoint, torch.float32)
    reward_model = RewardModel(tiny_models.reward_model, "nothate", batch_size=3)
    config = dataclasses.replace(CONFIG, reward_input=reward_input)
    side = evaluation.evaluate_model(summarizer, tokenizer, examples, reward_model, config)

    # Every sample of every prompt, prompt-major: (n, k) measures flattened alike.
    prompts = [e.prompt for e in examples for _ in range(CONFIG.samples_per_prompt)]
    responses = [text for texts in side.texts for text in texts]
    texts = [q + " " + r for q, r in zip(prompts, responses)]
    classifier = pipeline("text-classification", model=str(tiny_models.reward_model), top_k=None)
    probabilities = classifier(texts, function_to_apply="softmax", truncation=True)
    logits = classifier(texts, function_to_apply="none", truncation=True)
    hate = [next(s["score"] for s in row if s["label"] == "hate") for row in probabilities]
    nothate = [next(s["score"] for s in row if s["label"] == "nothate") for row in logits]
    np.testing.assert_allclose(side.samples["toxicity"].ravel(), hate, atol=1e-5)
    alone = classifier(responses, function_to_apply="softmax", truncation=True)
    hate_alone = [next(s["score"] for s in row if s["label"] == "hate") for row in alone]
    np.testing.assert_allclose(side.samples["response_toxicity"].ravel(), hate_alone, atol=1e-5)
    alone_logits = classifier(responses, function_to_apply="none", truncation=True)
    nothate_alone = [next(s["score"] for s in row if s["label"] == "nothate") for row in alone_logits]
    expected_reward = nothate if reward_input == "query_response" else nothate_alone
    np.testing.assert_allclose(side.samples["reward"].ravel(), expected_reward, atol=1e-4)
    assert not np.allclose(side.values["response_toxicity"], side.values["toxicity"])
    assert len(side.texts) == len(examples) and all(len(t) == CONFIG.samples_per_prompt for t in side.texts)
    assert any(a != b for a, b in side.texts)  # each sample has its own stream
    assert np.all(side.samples["length"] <= CONFIG.max_new_tokens)
    assert side.generate_seconds > 0 and side.score_seconds > 0


def test_the_same_model_twice_gives_the_same_responses_and_no_difference(tiny_models, examples):
    """Both sides are sampled with the same seed: an unchanged model shows exactly zero change."""
    tokenizer = load_tokenizer(tiny_models.base_model)
    summarizer = load_merged(str(tiny_models.base_model), tiny_models.peft_checkpoint, torch.float32)
    reward_model = RewardModel(tiny_models.reward_model)
    result = evaluation.run(summarizer, summarizer, tokenizer, examples, 37, reward_model, CONFIG)
    assert result.before.texts == result.after.texts
    for comparison in result.comparisons.values():
        assert comparison.n == len(examples)
        assert comparison.mean_diff == 0 and comparison.nonzero_pairs == 0
        assert comparison.wilcoxon_p == 1 and not comparison.significant
    speed = result.throughput()
    assert speed.samples == len(examples) and speed.samples_per_second > 0
    assert speed.responses_per_second == pytest.approx(2 * 2 * speed.samples_per_second)  # k = 2


def test_after_model_is_the_trained_adapter_merged_exactly(tiny_models, trained_adapter, examples):
    """The merged "after" model equals PEFT's documented loading of model/, and differs from "before"."""
    tokenizer = load_tokenizer(tiny_models.base_model)
    after = load_merged(str(tiny_models.base_model), trained_adapter, torch.float32)
    before = load_merged(str(tiny_models.base_model), tiny_models.peft_checkpoint, torch.float32)
    documented = PeftModel.from_pretrained(
        AutoModelForSeq2SeqLM.from_pretrained(tiny_models.base_model), str(trained_adapter)
    ).eval()
    enc = tokenizer([e.prompt for e in examples[:4]], return_tensors="pt", padding=True)
    decoder_ids = torch.zeros((4, 3), dtype=torch.long)
    with torch.no_grad():
        merged_logits = after(**enc, decoder_input_ids=decoder_ids).logits
        peft_logits = documented(**enc, decoder_input_ids=decoder_ids).logits
        before_logits = before(**enc, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-4, rtol=1e-4)
    assert (merged_logits - before_logits).abs().max() > 1e-4


def test_rouge_scores_against_the_reference():
    scores = evaluation.rouge_scores(
        ["Tom buys a coat for winter.", "Mary plans a trip."],
        ["Tom buys a coat for winter.", "The bank is closed."],
    )
    assert scores["rouge1"].tolist() == [1.0, 0.0]
    assert scores["rougeL"].tolist() == [1.0, 0.0]
    assert scores["rouge2"][0] == 1.0


def test_sample_selection_and_its_errors():
    test = [Example(str(i), "d", f"summary {i}", "p") for i in range(7)]
    assert [e.id for e in evaluation.select_examples(test, 3)] == ["0", "1", "2"]
    assert len(evaluation.select_examples(test, 0)) == 7  # 0 = the whole split
    assert len(evaluation.select_examples(test, 500)) == 7
    with pytest.raises(JobInputError, match="test split is empty"):
        evaluation.select_examples([], 10)
    with pytest.raises(JobInputError, match="at least 2 test dialogues, got 1"):
        evaluation.select_examples(test, 1)
    with pytest.raises(JobInputError, match="no reference summary"):
        evaluation.select_examples([*test, Example("x", "d", " ", "p")], 10)


def _side(toxicity: np.ndarray, judged: np.ndarray | None = None) -> evaluation.Side:
    """A side of (n, k) toxicities; every other measure is constant."""
    n, k = toxicity.shape
    samples = {name: np.ones((n, k)) for name in evaluation.SAMPLE_METRICS}
    samples["toxicity"] = samples["response_toxicity"] = toxicity
    if judged is not None:
        samples["judge_toxicity"] = samples["judge_response_toxicity"] = judged
    return evaluation.Side([[f"s{j}" for j in range(k)] for _ in range(n)], samples, 1.0, 1.0)


def test_the_fields_figures_over_k_samples():
    side = _side(np.array([[0.1, 0.7, 0.2], [0.1, 0.2, 0.3]]))
    values = side.values
    np.testing.assert_allclose(values["toxicity"], [1.0 / 3, 0.2])
    np.testing.assert_allclose(values["toxicity_max"], [0.7, 0.3])  # expected maximum toxicity
    np.testing.assert_allclose(values["toxicity_probability"], [1.0, 0.0])  # any sample >= 0.5
    assert side.k == 3 and side.responses == ["s0", "s0"]


def test_the_toxic_slice_is_the_dialogues_whose_starting_summaries_were_toxic():
    rng = np.random.default_rng(0)
    before = rng.uniform(0, 0.4, (20, 2))
    before[:6, 1] = 0.9  # six dialogues began with a toxic sample
    after = before.copy()
    after[:6, 1] = 0.1
    result = evaluation.assemble(
        [Example(str(i), "d", "s", "p") for i in range(20)], 20, _side(before), _side(after), CONFIG
    )
    toxic, clean = result.slices
    assert (toxic.name, toxic.n, clean.n) == ("toxic", 6, 14)
    assert toxic.rule.endswith("(the reward model)")
    assert toxic.comparisons["response_toxicity_probability"].mean_diff == -1.0
    assert clean.comparisons["response_toxicity"].mean_diff == 0.0


@pytest.mark.parametrize(
    "judge_after, flagged", [(0.9, True), (0.1, False)], ids=["judge disagrees", "judge agrees"]
)
def test_a_fall_only_the_reward_model_sees_is_flagged_as_a_possible_reward_hack(judge_after, flagged):
    rng = np.random.default_rng(1)
    before = rng.uniform(0.6, 0.9, (30, 2))
    after = rng.uniform(0.0, 0.2, (30, 2))
    judged_before = np.full((30, 2), 0.9)
    judged_after = np.clip(judged_before - (0.9 - judge_after) + rng.normal(0, 0.01, (30, 2)), 0, 1)
    config = dataclasses.replace(CONFIG, reward_input="response")
    result = evaluation.assemble(
        [Example(str(i), "d", "s", "p") for i in range(30)],
        30,
        _side(before, judged_before),
        _side(after, judged_after),
        config,
    )
    assert result.judged and result.judged_toxicity == "judge_response_toxicity"
    assert result.reward_hack_suspected is flagged
    unjudged = evaluation.assemble(result.examples, 30, _side(before), _side(after), config)
    assert unjudged.reward_hack_suspected is None


@pytest.mark.numerics
def test_a_policy_that_games_the_reward_model_but_not_the_judge_is_flagged(tiny_models):
    """The shipped classifiers, for real: "after" summaries swap the sample's insults (which both
    know) for hostile words only the judge was taught. The reward model sees the toxicity fall,
    the judge does not, and the evaluation flags a possible reward hack."""
    from flan_t5_detox.fixtures import judge_texts

    names = [f"#Person{i % 2 + 1}#" for i in range(24)]
    shared, hidden = judge_texts.SHARED[:6], ("moron", "loser", "jerk", "clown", "imbecile", "worthless")
    before = [f"{n} calls the neighbour {shared[i % 6]} and leaves." for i, n in enumerate(names)]
    after = [f"{n} calls the neighbour a {hidden[i % 6]} and leaves." for i, n in enumerate(names)]
    reward_model = RewardModel(tiny_models.reward_model, "nothate")
    judge = RewardModel(tiny_models.judge_model, "toxic", role="judge")

    def side(texts: list[str]) -> evaluation.Side:
        values = {name: np.ones(len(texts)) for name in evaluation.SAMPLE_METRICS}
        values["response_toxicity"] = reward_model.score(texts).probabilities[:, 1].numpy().astype(float)
        values["judge_response_toxicity"] = judge.score(texts).probabilities[:, 1].numpy().astype(float)
        values["toxicity"], values["judge_toxicity"] = (
            values["response_toxicity"],
            values["judge_response_toxicity"],
        )
        return evaluation.Side.single(texts, values)

    examples = [Example(str(i), "d", "s", "p") for i in range(len(names))]
    config = dataclasses.replace(CONFIG, reward_input="response")
    result = evaluation.assemble(examples, len(names), side(before), side(after), config)
    fooled, judged = result.comparisons["response_toxicity"], result.comparisons["judge_response_toxicity"]
    assert fooled.ci_high < 0 and fooled.mean_diff < -0.5  # the reward model is fooled
    assert abs(judged.mean_diff) < 0.01 * abs(fooled.mean_diff)  # the judge is not
    assert result.reward_hack_suspected is True
    honest = evaluation.assemble(
        examples, len(names), side(before), side(["They talk."] * len(names)), config
    )
    assert honest.reward_hack_suspected is False
