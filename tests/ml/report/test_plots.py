"""The plots: one registry of their files, and which of them a report has."""

from flan_t5_detox.ml import tradeoff
from flan_t5_detox.ml.evaluation import Side
from flan_t5_detox.ml.report import PLOT_FILES, PLOTS
from flan_t5_detox.ml.report.plots import (
    DIFFERENCES,
    DISTRIBUTIONS,
    FLUENCY,
    MAX_TOXICITY,
    TRADEOFF,
    TRAINING,
    draw_plots,
)
from tests.ml.report.synthetic import CONFIG, context, png_size, synthetic_evaluation


def test_the_registry_names_each_plot_once_as_a_png():
    assert PLOT_FILES == tuple(plot.file for plot in PLOTS)
    assert len(set(PLOT_FILES)) == len(PLOTS) == 6
    assert all(name.endswith(".png") for name in PLOT_FILES)
    assert len({plot.shows for plot in PLOTS}) == len(PLOTS)  # each alt text says what its plot shows


def test_a_report_without_training_output_or_kept_steps_has_the_four_comparison_plots():
    plots = draw_plots(synthetic_evaluation(), context(training=False))
    assert list(plots) == [MAX_TOXICITY.file, FLUENCY.file, DISTRIBUTIONS.file, DIFFERENCES.file]


def test_training_output_and_kept_steps_add_their_plots_in_the_registry_order():
    result = synthetic_evaluation()
    steps = {
        2: Side.single(
            result.before.responses, {k: v[:, 0] * 0.9 for k, v in result.before.samples.items()}, 1.0, 1.0
        )
    }
    result.curve = tradeoff.tradeoff_curve(result, steps, 4, CONFIG, {2: 0.02, 4: 0.04})
    plots = draw_plots(result, context())
    assert list(plots) == list(PLOT_FILES)
    assert TRAINING.file in plots and TRADEOFF.file in plots
    for png in plots.values():
        width, height = png_size(png)
        assert width >= 500 and height >= 300
    assert len({png for png in plots.values()}) == len(plots)  # six different pictures
