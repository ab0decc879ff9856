"""Held-out evaluation while training (`heldout.HeldOut`): the evaluate job's measurements of the
policy on prompts held out of training, and the KL to the starting summarizer on the very
responses the evaluate job's sampling gives."""

import numpy as np
import pytest
import torch

from flan_t5_detox.contract.settings import heldout_settings
from flan_t5_detox.ml import evaluation
from flan_t5_detox.ml.adapters import load_merged
from flan_t5_detox.ml.generation import detokenize
from flan_t5_detox.ml.heldout import FIGURES, HeldOut
from flan_t5_detox.ml.rewards import RewardModel
from tests.helpers import tiny_config, tiny_trainer


@pytest.fixture(scope="module")
def setup(tiny_models):
    """A trainer holding out 8 prompts, its held-out evaluation, and the prompts."""
    torch.set_num_threads(1)
    config = tiny_config(eval_every=1, eval_samples=8, learning_rate=3e-3, generation_batch_size=4)
    trainer = tiny_trainer(tiny_models, config)
    examples = trainer.prompts[-8:]  # stand-ins for the validation part: any prompts with summaries
    heldout = HeldOut(examples, RewardModel(tiny_models.reward_model), heldout_settings(config))
    trainer.heldout = heldout
    return trainer, heldout


class Spy:
    """The trainer's trl side, recording the responses whose KL it is asked for."""

    def __init__(self, trl):
        self.trl, self.responses = trl, []

    def response_kl(self, model, queries, responses):
        self.responses.append(responses)
        return self.trl.response_kl(model, queries, responses)


def test_the_start_is_measured_as_the_evaluate_job_measures_the_starting_summarizer(setup, tiny_models):
    trainer, heldout = setup
    spy = Spy(trainer.trl)
    figures = heldout.measure(trainer.policy, trainer.tokenizer, spy)
    assert set(figures) == set(FIGURES)
    assert figures["heldout_kl"] == 0.0  # the policy is still the starting summarizer, exactly

    # The evaluate job's code on the starting summarizer (the merged model it loads) agrees.
    start = load_merged(tiny_models.base_model, tiny_models.peft_checkpoint)
    side = evaluation.evaluate_model(
        start, trainer.tokenizer, heldout.examples, heldout.reward_model, heldout.config
    )
    assert figures["heldout_toxicity"] == pytest.approx(np.mean(side.values["response_toxicity"]), abs=1e-6)
    assert figures["heldout_rouge_l"] == pytest.approx(np.mean(side.values["rougeL"]), abs=1e-9)
    assert figures["heldout_reward"] == pytest.approx(np.mean(side.values["reward"]), abs=1e-5)
    # The KL was taken on the responses the evaluate job's sampling gave.
    assert detokenize(trainer.tokenizer, spy.responses[0]) == side.responses


def test_after_updates_the_kl_is_positive_and_a_measurement_repeats_exactly(setup):
    trainer, heldout = setup
    for _ in range(2):
        metrics = trainer.run_step().metrics
    assert set(FIGURES) <= set(metrics) and metrics["time_heldout"] > 0  # eval_every=1
    again = heldout.measure(trainer.policy, trainer.tokenizer, trainer.trl)
    assert again == {name: metrics[name] for name in FIGURES}  # own random streams: the same draws
    assert again["heldout_kl"] > 0
