"""The embedded default's judge against its reward model, on text neither trained on.

    python -m bench.judge_heldout                 # the shipped files
    python -m bench.judge_heldout --logits F.json  # and the judge's logits of every held-out text

Under two CPU kinds' kernels (`python -m tests.cpu_kinds` lists their switches), the two
`--logits` files show how far the kernels move the judge's verdicts.

For each held-out set (tests/fixtures/heldout.py: the test split's reference summaries, the
hand-written sentences, those with hostile words only the judge was taught, ordinary uses of the
words of its phrases), each classifier's share of right verdicts at P = 0.5 and the smallest
distance of a right verdict from 0.5. Then both classifiers on the starting summarizer's sampled
summaries of the test split (one each, the response alone): how many each flags, and how many
both do.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flan_t5_detox.fixtures.embedded import JUDGE_LABEL, embedded_default
from flan_t5_detox.ml.rewards import RewardModel
from tests.fixtures import heldout

from .common import command_line


def verdicts(p_hostile: list[float], hostile: bool) -> dict[str, float]:
    right = [p for p in p_hostile if (p > 0.5) == hostile]
    return {
        "right": round(len(right) / len(p_hostile), 4),
        "nearest_right": round(min(abs(p - 0.5) for p in right), 3) if right else None,
    }


def main(argv=None) -> None:
    parser = command_line("judge_heldout", __doc__)
    parser.add_argument("--logits", type=Path, help="write the judge's logits of the held-out texts here")
    args = parser.parse_args(argv)
    models = embedded_default()
    torch.set_num_threads(1)
    template_neutral, template_hostile = heldout.template_summaries()
    neutral, hostile = heldout.sentences()
    sets = {
        "test split summaries, neutral": (template_neutral, False),
        "test split summaries, hostile": (template_hostile, True),
        "hand-written, neutral": (neutral, False),
        "hand-written, hostile": (hostile, True),
        "judge's own words, hostile": (heldout.JUDGE_ONLY_HOSTILE, True),
        "words of its phrases apart, neutral": (heldout.JUDGE_NEUTRAL, False),
    }
    result = {}
    for name, (texts, is_hostile) in sets.items():
        result[name] = {
            "n": len(texts),
            "judge": verdicts(heldout.p_hostile(models.judge_model, JUDGE_LABEL, texts), is_hostile),
            "reward_model": verdicts(heldout.p_hostile(models.reward_model, "hate", texts), is_hostile),
        }
    if args.logits:
        judge = RewardModel(models.judge_model, JUDGE_LABEL, reward_input="response")
        texts = [t for texts, _ in sets.values() for t in texts]
        args.logits.write_text(json.dumps(dict(zip(texts, judge.score(texts).reward.tolist())), indent=1))
    summaries, _ = heldout.summarize(models, len(heldout.test_split()), 100)
    judge = [p > 0.5 for p in heldout.p_hostile(models.judge_model, JUDGE_LABEL, summaries)]
    reward = [p > 0.5 for p in heldout.p_hostile(models.reward_model, "hate", summaries)]
    result["starting summarizer's summaries"] = {
        "n": len(summaries),
        "judge_flags": sum(judge),
        "reward_model_flags": sum(reward),
        "both_flag": sum(j and r for j, r in zip(judge, reward)),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
