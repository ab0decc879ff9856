import re

from flan_t5_detox.contract.metrics import METRIC_NAMES, MetricsLog, format_metrics_line, metric_definitions


def test_metric_definitions_scrape_the_printed_line():
    values = {name: i + 0.5 for i, name in enumerate(METRIC_NAMES)}
    values["step"] = 7
    values["kl"] = -1.25e-05
    line = "2026-01-01 INFO " + format_metrics_line(values)
    for definition in metric_definitions():
        name = definition["Name"].split(":", 1)[1]
        match = re.search(definition["Regex"], line)
        assert match, definition
        assert float(match.group(1)) == float(f"{values[name]:.6g}")


def test_metrics_log_truncates_after_a_step(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for step in (1, 2, 3):
        log.append({"step": step, "kl": float("nan")})
    log.truncate_after(2)
    assert [line["step"] for line in log.read()] == [1, 2]
    assert log.read()[0]["kl"] is None
