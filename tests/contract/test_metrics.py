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


def test_metrics_log_is_rewritten_from_a_history_and_drops_a_torn_line(tmp_path, caplog):
    log = MetricsLog(tmp_path / "m.jsonl")
    for step in (1, 2, 3):
        log.append({"step": step, "kl": float("nan")})
    log.rewrite([{"step": 1, "kl": float("inf")}, {"step": 2, "kl": 0.5}])
    assert [line["step"] for line in log.read()] == [1, 2]
    assert log.read()[0]["kl"] is None
    assert not list(tmp_path.glob(".*"))  # the rewrite's temporary is gone
    with log.path.open("a") as handle:
        handle.write('{"step": 3, "kl": 0.')  # torn by a kill
    assert [line["step"] for line in log.read()] == [1, 2]
    assert f"{log.path} line 3 is not a metrics record" in caplog.text
