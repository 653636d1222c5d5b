"""Prometheus metrics, read from Redis at scrape time: every worker process's streams in one place.

Named as Prometheus asks (prometheus.io/docs/practices/naming): counters end in `_total` and
come from each stream's counters hash (`collector:counters:<sid>`), which outlives its tasks, so they never
go back when a task restarts; units are in the names (`_seconds`); states and ages are gauges. A scrape
costs a fixed number of Redis round trips whatever the number of streams: the status SCAN and its
pipeline, one pipeline for everything else, and the buffer's two.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from django.conf import settings
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from workers.audit import AUDIT_COUNTS
from workers.buffer import buffer_stats
from workers.deadletters import DEAD_LETTERS_TOTAL
from workers.keys import BEAT_SEEN, COUNTED, DATASET_FACTS, PERIODIC_ERRORS, StreamId, counters_key
from workers.redis import sync_redis
from workers.status import StreamStatus, all_statuses, shown_state
from workers.store import REFUSED_BY_SOURCE, SOURCES

# Counter field in collector:counters:<sid> (workers.keys.COUNTED, and task_failures) -> (name without _total,
# help); a field added to COUNTED without an entry here is still exported, as collector_stream_<field>_total.
STREAM_COUNTERS: dict[str, tuple[str, str]] = {
    "trades": ("collector_stream_trades", "Trades handed to the buffer."),
    "messages": ("collector_stream_messages", "Frames received from the exchange."),
    "reconnects": ("collector_stream_reconnects", "Reconnects to the exchange."),
    "gaps_found": ("collector_stream_gaps_found", "Gaps in the trade ids found."),
    "gaps_healed": ("collector_stream_gaps_healed", "Gaps healed from REST."),
    "missed": ("collector_stream_trades_missed", "Trade ids given up (beyond the backfill window, REST failed)."),
    "ids_back": ("collector_stream_ids_back", "Live trade ids going back on one subscription (a replay, a reset)."),
    "parse_errors": ("collector_stream_parse_errors", "Frames that could not be parsed (dead-lettered)."),
    "errors": ("collector_stream_errors", "Transient errors (Redis, REST) met and retried."),
    "broadcast_dropped": ("collector_stream_broadcast_dropped", "Trades not broadcast to browsers (best effort)."),
    "task_failures": ("collector_stream_task_failures", "Stream tasks that ended with an unexpected error."),
}
# StreamStatus field -> (gauge name, help, factor to seconds). Ages as of the scrape, on Redis's clock.
STREAM_AGES: dict[str, tuple[str, str, float]] = {
    "lag_ms": ("collector_stream_lag_seconds", "Receive time minus exchange event time of the last trade.", 1e-3),
    "last_trade_age": ("collector_stream_last_trade_age_seconds", "Seconds since the last live trade.", 1.0),
    "last_frame_age": ("collector_stream_last_frame_age_seconds", "Seconds since any frame arrived.", 1.0),
    "heartbeat_age": ("collector_stream_heartbeat_age_seconds", "Seconds since the task's last heartbeat.", 1.0),
    "connected_for": ("collector_stream_connected_seconds", "Seconds since the current connection opened.", 1.0),
    "stuck_for": ("collector_stream_stuck_seconds", "Seconds trades have waited without being handed on.", 1.0),
}
PERIODIC_TASKS = ("flush", "supervise", "audit", "ensure")  # workers.tasks._periodic names: 0 before any error
AUDIT_OUTCOMES = ("filled", "unfilled", "replayed", "conflicts", "unchecked")  # trades, by the audit's verdict


class StreamsCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        from workers.registry import enabled_streams

        enabled = set(enabled_streams())
        statuses = all_statuses()
        sids = sorted(enabled | set(statuses))
        client = sync_redis()
        with client.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hgetall(counters_key(sid))
            pipe.get(BEAT_SEEN)
            pipe.time()
            pipe.get(DEAD_LETTERS_TOTAL)
            pipe.hgetall(PERIODIC_ERRORS)
            pipe.hgetall(AUDIT_COUNTS)
            pipe.hgetall(REFUSED_BY_SOURCE)
            pipe.get(DATASET_FACTS)
            *counters, beat_seen, (seconds, micros), dead_letters, periodic, audit, refused, dataset = pipe.execute()
        yield from _stream_metrics(sids, enabled, statuses, counters)
        yield from _buffer_metrics(buffer_stats(client))
        yield CounterMetricFamily("collector_dead_letters", "Frames, buffer entries and trades dead-lettered.",
                                  value=float(dead_letters or 0))
        yield _labelled_counter("collector_trades_refused", "Trades the database refused (dead-lettered), by writer.",
                                "source", SOURCES, _ints(refused))
        age = math.inf if beat_seen is None else max(0.0, seconds + micros / 1e6 - float(beat_seen))
        yield GaugeMetricFamily("collector_beat_last_tick_age_seconds",
                                "Seconds since a periodic task last ran (+Inf: never), on Redis's clock.", value=age)
        yield _labelled_counter("collector_periodic_errors", "Transient failures of the periodic tasks.", "task",
                                PERIODIC_TASKS, _ints(periodic))
        audit_counts = _ints(audit)
        yield CounterMetricFamily("collector_audit_holes_found", "Holes in the stored trade ids found by the audit.",
                                  value=float(audit_counts.pop("holes", 0)))
        yield _labelled_counter("collector_audit_trades", "Trades the audit handled, by outcome (unfilled: "
                                "left missing at a pass, counted again at each pass).", "outcome", AUDIT_OUTCOMES,
                                audit_counts)
        yield from _dataset_metrics(None if dataset is None else orjson.loads(dataset), seconds + micros / 1e6)


def _dataset_metrics(facts: dict[str, Any] | None, now: float) -> Iterator[Metric]:
    """Completeness and seals, as the last sealing or scrub pass found them (workers.seal.publish_facts)."""
    incomplete = GaugeMetricFamily("collector_dataset_days_incomplete", "Closed UTC days not proven complete "
                                   "(holes, or an edge not established).", labels=["stream"])
    yesterday = GaugeMetricFamily("collector_dataset_yesterday_complete", "1 when yesterday (UTC) is proven "
                                  "complete, 0 when not.", labels=["stream"])
    damaged = GaugeMetricFamily("collector_dataset_days_damaged", "Sealed days whose lake file is missing, altered "
                                "or short.", labels=["stream"])
    for sid, values in sorted((facts or {}).get("streams", {}).items()):
        incomplete.add_metric([sid], float(values.get("incomplete", 0)))
        damaged.add_metric([sid], float(values.get("damaged", 0)))
        if "yesterday_complete" in values:
            yesterday.add_metric([sid], float(values["yesterday_complete"]))
    yield from (incomplete, yesterday, damaged)
    if facts is not None:
        yield GaugeMetricFamily("collector_dataset_sealed_days", "Days sealed in the lake.",
                                value=float(facts["sealed_days"]))
        yield GaugeMetricFamily("collector_dataset_lake_bytes", "Bytes of the lake's sealed files.",
                                value=float(facts["lake_bytes"]))
        yield GaugeMetricFamily("collector_dataset_facts_age_seconds", "Seconds since the completeness above was "
                                "computed (the sealing and scrub passes).", value=max(0.0, now - facts["computed_at"]))


def _stream_metrics(sids: list[StreamId], enabled: set[StreamId], statuses: dict[StreamId, StreamStatus],
                    counters: list[dict[bytes, bytes]]) -> Iterator[Metric]:
    up = GaugeMetricFamily("collector_stream_up", "1 when the stream is connected and fresh.", labels=["stream"])
    on = GaugeMetricFamily("collector_stream_enabled", "1 when the stream is enabled.", labels=["stream"])
    state = GaugeMetricFamily("collector_stream_state", "The stream's state (the label), always 1.",
                              labels=["stream", "state"])
    totals = {field: CounterMetricFamily(*STREAM_COUNTERS.get(field, (f"collector_stream_{field}", field)),
                                         labels=["stream"]) for field in (*COUNTED, "task_failures")}
    ages = {field: GaugeMetricFamily(name, text, labels=["stream"]) for field, (name, text, _) in STREAM_AGES.items()}
    for sid, raw in zip(sids, counters, strict=True):
        status, label = statuses.get(sid), str(sid)
        shown = shown_state(status)
        up.add_metric([label], 1.0 if shown == "connected" else 0.0)
        on.add_metric([label], 1.0 if sid in enabled else 0.0)
        state.add_metric([label, shown], 1.0)
        values = _ints(raw)
        for field, total in totals.items():
            total.add_metric([label], float(values.get(field, 0)))
        for field, gauge in ages.items():
            value = None if status is None else getattr(status, field)
            if value is not None:
                gauge.add_metric([label], float(value) * STREAM_AGES[field][2])
    yield from (up, on, state, *totals.values(), *ages.values())


def _buffer_metrics(buffer: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily("collector_buffer_trades", "Trades waiting in the hand-off buffer.",
                            value=float(buffer["trades_waiting"]))
    yield GaugeMetricFamily("collector_buffer_max_trades", "The buffer's bound (COLLECTOR_BUFFER_MAX_TRADES).",
                            value=float(settings.COLLECTOR_BUFFER_MAX_TRADES))
    yield GaugeMetricFamily("collector_buffer_entries", "Entries in the hand-off buffer.",
                            value=float(buffer["length"]))
    yield GaugeMetricFamily("collector_buffer_pending_entries", "Buffer entries read by a flusher, not yet written.",
                            value=float(buffer["pending"]))
    yield GaugeMetricFamily("collector_buffer_oldest_age_seconds", "Age of the oldest buffer entry (0: empty).",
                            value=float(buffer["oldest_age_seconds"] or 0.0))


def _labelled_counter(name: str, text: str, label: str, known: Iterable[str], counts: dict[str, int]) -> Metric:
    values = {key: 0 for key in known} | counts
    family = CounterMetricFamily(name, text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], float(value))
    return family


def _ints(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {key.decode(): int(value) for key, value in raw.items()}


def render() -> bytes:
    registry = CollectorRegistry()
    registry.register(StreamsCollector())
    return generate_latest(registry)
