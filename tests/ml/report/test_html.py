"""report.html: escaped, self-contained, and as a real browser renders it."""

import base64
import json
import re
import shutil
import subprocess

import pytest
from matplotlib.image import imread

from flan_t5_detox.ml.report import REPORT_HTML, write_report
from tests.ml.report.synthetic import CONFIG, N, context, png_size, synthetic_evaluation


def test_the_page_escapes_model_text_and_states_the_sample(written):
    page = (written.folder / "report.html").read_text()
    assert "<script" not in page  # model text is escaped; the page has no scripts of its own
    assert "&lt;script&gt;" in page
    assert f"n = {N}" in page and "of 37 dialogues in the test split" in page
    assert page.count("class='example'") == 2 * CONFIG.examples_in_report


# ---------------------------------------------------------------- the page in a real browser


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "headless Chromium is needed: apt-get install -y --no-install-recommends chromium"
    return path


def _chromium_run(tmp_path, *args) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium_with_its_plots(tmp_path, written):
    out = written.folder
    url = (out / "report.html").as_uri()

    dom = _chromium_run(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    images = re.findall(r"<img src=\"data:image/png;base64,([^\"]+)\"[^>]*data-file=\"([^\"]+)\"", dom.stdout)
    assert [name for _, name in images] == [
        "max_toxicity_distribution.png",
        "fluency_diversity.png",
        "toxicity_distribution.png",
        "paired_differences.png",
        "training_curves.png",
    ]
    for data, name in images:
        png = base64.b64decode(data)
        assert png == (out / name).read_bytes()  # the page embeds exactly the PNG files
        width, height = png_size(png)
        assert width >= 500 and height >= 300

    shot = tmp_path / "screenshot.png"
    result = _chromium_run(tmp_path, f"--screenshot={shot}", "--window-size=1200,4200", url)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (4200, 1200)
    # Plots are the only strongly coloured things on the page: their bars and lines must be painted.
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.3
    assert saturated.sum() > 20000, saturated.sum()
    assert (pixels.min(axis=2) < 0.3).sum() > 5000  # and there is dark text


@pytest.mark.parametrize("judge", ["agrees", "blind"])
def test_the_judge_stands_beside_the_reward_model_and_a_fall_only_the_reward_model_sees_is_flagged(
    tmp_path, judge
):
    result = synthetic_evaluation(judge=judge)
    write_report(tmp_path, result, context())
    page = (tmp_path / REPORT_HTML).read_text()
    data = json.loads((tmp_path / "report.json").read_text())
    assert "by the independent judge" in page and "No judge was given" not in page
    assert data["verdict"]["toxicity_judge"] == "judge"
    assert data["verdict"]["toxicity_metric"] == "judge_toxicity"
    assert set(data["field_figures"]) == {
        "toxicity",
        "response_toxicity",
        "judge_toxicity",
        "judge_response_toxicity",
    }
    flagged = judge == "blind"
    assert data["reward_hack_suspected"] is flagged and data["verdict"]["reward_hack_suspected"] is flagged
    assert ("Possible reward hack" in page) is flagged


def test_without_a_judge_the_page_says_every_toxicity_is_the_reward_models(written):
    page = (written.folder / REPORT_HTML).read_text()
    assert "No judge was given" in page and "Possible reward hack" not in page
    assert "Over k = 1 samples per prompt, by the reward model" in page


def test_an_after_adapter_kept_by_keep_best_says_which_step_it_is_and_why(tmp_path):
    chosen = {
        "step": 16,
        "rule": "the lowest held-out toxicity whose ROUGE-L is at most 0.02 below the start's",
        "figures": {"heldout_toxicity": 0.05, "heldout_rouge_l": 0.74},
        "start": {"heldout_toxicity": 0.2, "heldout_rouge_l": 0.75},
        "last_step": 20,
    }
    kept = context()
    kept.sources["after_adapter"].info = {"ppo_steps": 16, "chosen": chosen}
    write_report(tmp_path / "kept", synthetic_evaluation(), kept)
    page = (tmp_path / "kept" / REPORT_HTML).read_text()
    assert "adapter of PPO step 16 of 20, kept by <code>keep_best</code>" in page
    assert "toxicity 0.05 (start 0.2)" in page and "at most 0.02 below" in page

    write_report(tmp_path / "last", synthetic_evaluation(), context())  # no choice: nothing said
    assert "keep_best" not in (tmp_path / "last" / REPORT_HTML).read_text()
