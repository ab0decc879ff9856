"""Writing the report folder: every file is staged in a folder inside it, then published with
`contract.outputs.publish`, report.json last, so a failed job never leaves a half-written report
and a report.json is always with the files it lists."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from flan_t5_detox.contract.disk import EVALUATE_FIX, writing
from flan_t5_detox.contract.outputs import publish
from flan_t5_detox.ml.evaluation import Evaluation
from flan_t5_detox.ml.report.context import ReportContext
from flan_t5_detox.ml.report.html import REPORT_HTML, render_html
from flan_t5_detox.ml.report.plots import PLOT_FILES, draw_plots
from flan_t5_detox.ml.report.tables import (
    COMPARISONS_CSV,
    REPORT_JSON,
    TRADEOFF_CSV,
    comparison_rows,
    report_data,
    tradeoff_rows,
    write_csv,
)

# The files a report may lack (a curve or plot this run has not): an earlier run's must go.
OPTIONAL_FILES = (TRADEOFF_CSV, *PLOT_FILES)


def write_report(out_dir: Path, evaluation: Evaluation, context: ReportContext) -> list[Path]:
    """Write every report file into `out_dir`; on any error the files there do not change, and
    a full disk fails with what, where and the free space (`disk.writing`)."""
    with writing("the report", Path(out_dir), EVALUATE_FIX):
        return _write_report(out_dir, evaluation, context)


def _write_report(out_dir: Path, evaluation: Evaluation, context: ReportContext) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Staged inside `out_dir`, so each file's move is a rename even where `out_dir` is a mount of
    # its own (SageMaker's local mode mounts every processing output separately).
    staging = Path(tempfile.mkdtemp(prefix=".report-staging-", dir=out_dir))
    try:
        plots = draw_plots(evaluation, context)
        for name, png in plots.items():
            (staging / name).write_bytes(png)
        tables = {COMPARISONS_CSV: comparison_rows(evaluation)}
        if evaluation.curve:
            tables[TRADEOFF_CSV] = tradeoff_rows(evaluation)
        for name, rows in tables.items():
            write_csv(staging / name, rows)
        files = [*tables, REPORT_HTML, *plots]
        data = report_data(evaluation, context, files)
        (staging / REPORT_HTML).write_text(render_html(evaluation, context, plots, data))
        (staging / REPORT_JSON).write_text(json.dumps(data, indent=2, allow_nan=False))
        publish(staging, out_dir, last=REPORT_JSON, stale=OPTIONAL_FILES)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in [*files, REPORT_JSON]]
