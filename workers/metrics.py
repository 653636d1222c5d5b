"""Prometheus metrics, read from Redis at scrape time: every worker process's streams in one place."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from workers.health import streams_report

_STREAM_GAUGES = {
    "trades": ("collector_stream_trades", "Trades handed to the buffer by the stream's current task."),
    "trades_per_s": ("collector_stream_trades_per_second", "Trades per second of the current task."),
    "reconnects": ("collector_stream_reconnects", "Reconnects of the current task's client."),
    "gaps_found": ("collector_stream_gaps_found", "Gaps in the trade ids found by the current task."),
    "gaps_healed": ("collector_stream_gaps_healed", "Gaps healed from REST by the current task."),
    "missed": ("collector_stream_trades_missed", "Trade ids given up (beyond the backfill window)."),
    "ids_back": ("collector_stream_ids_back", "Live trade ids at or below the last one (a replay, a reset)."),
    "parse_errors": ("collector_stream_parse_errors", "Frames that could not be parsed."),
    "errors": ("collector_stream_errors", "Transient errors (Redis, REST) met and retried by the current task."),
    "task_failures": ("collector_stream_task_failures", "Stream tasks that ended with an unexpected error."),
    "stuck_for": ("collector_stream_stuck_seconds", "Seconds trades have waited without being handed on."),
    "last_trade_age": ("collector_stream_last_trade_age_seconds", "Seconds since the last live trade arrived."),
    "lag_ms": ("collector_stream_lag_milliseconds", "Now minus the last trade's exchange event time."),
}


class StreamsCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        report = streams_report()
        up = GaugeMetricFamily("collector_stream_up", "1 when the stream is connected and fresh.",
                               labels=["stream", "state"])
        gauges = {key: GaugeMetricFamily(name, text, labels=["stream"]) for key, (name, text) in _STREAM_GAUGES.items()}
        for entry in report["streams"]:
            up.add_metric([entry["stream"], entry["state"]], 1.0 if entry["state"] == "connected" else 0.0)
            for key, gauge in gauges.items():
                if entry.get(key) is not None:
                    gauge.add_metric([entry["stream"]], float(entry[key]))
        yield up
        yield from gauges.values()
        buffer = report["buffer"]
        yield GaugeMetricFamily("collector_buffer_trades_waiting", "Trades waiting in the hand-off buffer.",
                                value=float(buffer["trades_waiting"]))
        yield GaugeMetricFamily("collector_buffer_pending_entries", "Buffer entries read but not yet written.",
                                value=float(buffer["pending"]))
        yield GaugeMetricFamily("collector_dead_letters", "Trades, frames and entries dead-lettered, ever.",
                                value=float(report["dead_letters"]["total"]))


def render() -> bytes:
    registry = CollectorRegistry()
    registry.register(StreamsCollector())
    return generate_latest(registry)
