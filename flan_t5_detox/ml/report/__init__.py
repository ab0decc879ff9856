"""The evaluate job's report: report.json, comparisons.csv (and tradeoff.csv), report.html and
the plots as PNG, one idea a module:

    training_output  what the train job's output/data/ holds for the report (the PPO curves)
    context          how the measurements were made, and its JSON round trip (shards carry it)
    tables           the figures as data: report.json's content and the CSV rows
    plots            the plots, and `PLOTS`, the one registry of their files
    html             the self-contained page
    writer           the folder: staged inside it, then published whole (`write_report`)
"""

from flan_t5_detox.ml.report.context import ReportContext, context_from_json, context_json
from flan_t5_detox.ml.report.html import REPORT_HTML, render_html
from flan_t5_detox.ml.report.plots import PLOT_FILES, PLOTS, Plot
from flan_t5_detox.ml.report.tables import COMPARISONS_CSV, REPORT_JSON, TRADEOFF_CSV, report_data
from flan_t5_detox.ml.report.training_output import TrainingCurves, read_training_output
from flan_t5_detox.ml.report.writer import write_report

__all__ = [
    "COMPARISONS_CSV",
    "PLOTS",
    "PLOT_FILES",
    "REPORT_HTML",
    "REPORT_JSON",
    "TRADEOFF_CSV",
    "Plot",
    "ReportContext",
    "TrainingCurves",
    "context_from_json",
    "context_json",
    "read_training_output",
    "render_html",
    "report_data",
    "write_report",
]
