"""workers/monitoring/: the alert rules and the Grafana dashboard use only metrics that /metrics exports;
promtool checks their syntax and behaviour in `make test` (Makefile: monitoring-check)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.binance.streamid import StreamId
from workers.audit import AUDIT_COUNTS
from workers.keys import BEAT_SEEN, DATASET_FACTS, PERIODIC_ERRORS, counters_key
from workers.metrics import render
from workers.redis import sync_redis
from workers.registry import enable_stream
from workers.status import StreamStatus, server_time, write_status_now

MONITORING = Path(__file__).resolve().parents[2] / "workers" / "monitoring"
PROMQL_WORDS = {
    # functions, aggregations and keywords used in PromQL, and Grafana's template functions
    "rate", "irate", "increase", "deriv", "delta", "sum", "min", "max", "avg", "count", "absent", "topk",
    "bottomk", "clamp_min", "clamp_max", "abs", "time", "and", "or", "unless", "bool", "offset", "label_values",
    "histogram_quantile", "humanize", "humanizeDuration", "sort", "sort_desc", "max_over_time", "min_over_time",
}
PROMETHEUS_OWN = {"up"}  # the scrape's own series


@pytest.fixture
def exported(db: None, clean_redis: None) -> set[str]:
    """Every sample name /metrics renders, with data in every family."""
    enable_stream("BTCUSDT", "trade")
    client = sync_redis()
    write_status_now(client, StreamId.parse("btcusdt@trade"),
                     StreamStatus(state="connected", last_frame_age=0.1, last_trade_age=0.2, lag_ms=12,
                                  connected_for=5.0, stuck_for=1.0), ttl=60)
    client.hincrby(counters_key(StreamId.parse("btcusdt@trade")), "trades", 3)
    client.set(BEAT_SEEN, f"{server_time(client):.3f}")
    client.hincrby(PERIODIC_ERRORS, "flush", 1)
    client.hincrby(AUDIT_COUNTS, "holes", 1)
    client.set(DATASET_FACTS, orjson.dumps({"computed_at": 0.0, "sealed_days": 1, "lake_bytes": 100, "damaged": [],
                                            "streams": {"btcusdt@trade": {"incomplete": 1, "damaged": 1,
                                                                          "yesterday_complete": 0}}}))
    text = render().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (labels, ranges, strings and grouping clauses removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,[^)]*\)", r"\1", expr)
    words = set(re.findall(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return words - PROMQL_WORDS


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return data


def dashboard_exprs() -> list[str]:
    exprs = [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]
    exprs += [var["definition"] for var in dashboard()["templating"]["list"] if var["type"] == "query"]
    return exprs


def test_the_alert_rules_read_only_metrics_the_exporter_produces(exported: set[str]) -> None:
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported | PROMETHEUS_OWN, (rule["alert"], names - exported)


def test_the_dashboard_reads_only_metrics_the_exporter_produces(exported: set[str]) -> None:
    for expr in dashboard_exprs():
        names = metric_names(expr)
        assert names and names <= exported, (expr, names - exported)


def test_a_misspelt_metric_would_be_caught() -> None:
    assert metric_names('sum by (stream) (rate(collector_stream_trade_total{stream=~"$stream"}[$__rate_interval]))') \
        == {"collector_stream_trade_total"}


def test_the_alerts_cover_what_the_issue_asks_for() -> None:
    alerts = {rule["alert"] for rule in alert_rules()}
    assert {"CollectorStreamDown", "CollectorGapsNotHealed", "CollectorBufferGrowing", "CollectorNoBeat",
            "CollectorFlushFailing", "CollectorDeadLetters"} <= alerts
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning") and rule["annotations"]["summary"]


def test_the_dashboard_shows_what_the_issue_asks_for_and_imports_anywhere() -> None:
    board = dashboard()
    exprs = " ".join(dashboard_exprs())
    for needle in ("collector_stream_up", "rate(collector_stream_trades_total", "collector_stream_gaps_found_total",
                   "collector_stream_gaps_healed_total", "collector_stream_lag_seconds", "collector_buffer_trades",
                   "collector_dead_letters_total", "collector_stream_task_failures_total",
                   'collector_periodic_errors_total', "collector_beat_last_tick_age_seconds"):
        assert needle in exprs, needle
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["__inputs"][0]["name"] == "DS_PROMETHEUS"  # Grafana asks for the data source on import
    assert all(panel["datasource"]["uid"] == "${DS_PROMETHEUS}" for panel in board["panels"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) is missing")
def test_promtool_passes_the_rules_and_their_unit_tests() -> None:
    check = subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=MONITORING, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", "alerts.test.yml"], cwd=MONITORING, capture_output=True,
                          text=True, check=False)
    assert unit.returncode == 0, unit.stdout + unit.stderr
