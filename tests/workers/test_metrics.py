"""/metrics: Prometheus' conventions, counters that survive task restarts, and a scrape cost that does not
grow with the number of streams."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from streams.binance.protocol import TRADE, Trade
from streams.binance.streamid import StreamId, stream_id
from workers.audit import AUDIT_COUNTS
from workers.buffer import append_trades
from workers.deadletters import DEAD_LETTERS_TOTAL
from workers.keys import BEAT_SEEN, COUNTED, PERIODIC_ERRORS, counters_key, status_key
from workers.metrics import STREAM_COUNTERS, render
from workers.redis import async_redis, sync_redis
from workers.registry import enable_stream
from workers.status import StreamStatus, server_time, write_status_now

pytestmark = pytest.mark.django_db


def samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    text = render().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(name: str, **labels: str) -> float:
    return samples()[(name, frozenset(labels.items()))]


def report(sid: str, **fields: Any) -> None:
    values: dict[str, Any] = {"state": "connected", "worker": "w1", "last_frame_age": 0.1, "trades": 42,
                              "lag_ms": 1500, "connected_for": 30.0}
    values.update(fields)
    write_status_now(sync_redis(), StreamId.parse(sid), StreamStatus(**values), ttl=60)


def count(sid: str, **deltas: int) -> None:
    """What a stream task's heartbeat does (workers.runtime: counters): add to the stream's counters."""
    with sync_redis().pipeline(transaction=False) as pipe:
        for name, delta in deltas.items():
            pipe.hincrby(counters_key(StreamId.parse(sid)), name, delta)
        pipe.execute()


def test_counters_are_totals_that_do_not_go_back_when_a_task_restarts(clean_redis: None) -> None:
    enable_stream("BTCUSDT", "trade")
    count("btcusdt@trade", trades=1000, gaps_found=3, gaps_healed=2, reconnects=4)
    report("btcusdt@trade", trades=1000)
    assert value("collector_stream_trades_total", stream="btcusdt@trade") == 1000.0
    # The task dies; its successor has handed on 7 trades so far and counted them into the same hash.
    count("btcusdt@trade", trades=7, task_failures=1)
    report("btcusdt@trade", trades=7, reconnects=0)
    assert value("collector_stream_trades_total", stream="btcusdt@trade") == 1007.0
    assert value("collector_stream_reconnects_total", stream="btcusdt@trade") == 4.0
    assert value("collector_stream_gaps_found_total", stream="btcusdt@trade") == 3.0
    assert value("collector_stream_gaps_healed_total", stream="btcusdt@trade") == 2.0
    assert value("collector_stream_task_failures_total", stream="btcusdt@trade") == 1.0


def test_every_counted_field_is_a_total_and_an_enabled_stream_that_never_ran_counts_zero(clean_redis: None) -> None:
    enable_stream("ETHUSDT", "trade")
    scrape = samples()
    for field in (*COUNTED, "task_failures"):
        name = STREAM_COUNTERS.get(field, (f"collector_stream_{field}", ""))[0] + "_total"
        assert scrape[(name, frozenset({("stream", "ethusdt@trade")}))] == 0.0, name
    assert scrape[("collector_stream_up", frozenset({("stream", "ethusdt@trade")}))] == 0.0
    assert scrape[("collector_stream_enabled", frozenset({("stream", "ethusdt@trade")}))] == 1.0
    assert scrape[("collector_stream_state", frozenset({("stream", "ethusdt@trade"), ("state", "not running")}))] == 1


def test_up_is_one_only_for_a_connected_fresh_stream_and_ages_are_in_seconds(clean_redis: None, settings: Any) -> None:
    settings.COLLECTOR_STALE_AFTER = 5.0
    enable_stream("BTCUSDT", "trade")
    enable_stream("ETHUSDT", "trade")
    report("btcusdt@trade")
    report("ethusdt@trade", last_frame_age=60.0)  # open socket, nothing for a minute
    scrape = samples()
    assert scrape[("collector_stream_up", frozenset({("stream", "btcusdt@trade")}))] == 1.0
    assert scrape[("collector_stream_up", frozenset({("stream", "ethusdt@trade")}))] == 0.0
    assert scrape[("collector_stream_state", frozenset({("stream", "ethusdt@trade"), ("state", "stalled")}))] == 1.0
    assert scrape[("collector_stream_lag_seconds", frozenset({("stream", "btcusdt@trade")}))] == 1.5
    assert 60.0 <= scrape[("collector_stream_last_frame_age_seconds", frozenset({("stream", "ethusdt@trade")}))] < 70
    assert not [name for name, _ in scrape if "millisecond" in name]


def test_buffer_dead_letters_beat_flush_failures_and_audit_are_exported(clean_redis: None) -> None:
    trades = [Trade("BTCUSDT", TRADE, i, "61837.01000000", "0.00100000", 1723161255342, 1723161255343, True)
              for i in range(1, 6)]

    async def append() -> None:
        client = async_redis()
        try:
            await append_trades(client, trades)
        finally:
            await client.aclose()

    asyncio.run(append())
    client = sync_redis()
    client.set(DEAD_LETTERS_TOTAL, 7)
    client.set(BEAT_SEEN, f"{server_time(client) - 42:.3f}")  # the beat's mark is on Redis's clock
    client.hincrby(PERIODIC_ERRORS, "flush", 3)
    client.hset(AUDIT_COUNTS, mapping={"holes": 2, "filled": 10, "unfilled": 4})
    scrape = samples()
    assert scrape[("collector_buffer_trades", frozenset())] == 5.0
    assert scrape[("collector_buffer_entries", frozenset())] >= 1.0
    assert scrape[("collector_dead_letters_total", frozenset())] == 7.0
    assert 42.0 <= scrape[("collector_beat_last_tick_age_seconds", frozenset())] < 52.0
    assert scrape[("collector_periodic_errors_total", frozenset({("task", "flush")}))] == 3.0
    assert scrape[("collector_periodic_errors_total", frozenset({("task", "supervise")}))] == 0.0
    assert scrape[("collector_audit_holes_found_total", frozenset())] == 2.0
    assert scrape[("collector_audit_trades_total", frozenset({("outcome", "filled")}))] == 10.0
    assert scrape[("collector_audit_trades_total", frozenset({("outcome", "unfilled")}))] == 4.0
    assert scrape[("collector_audit_trades_total", frozenset({("outcome", "conflicts")}))] == 0.0


def test_the_beat_age_is_infinite_before_any_periodic_task_ran(clean_redis: None) -> None:
    assert value("collector_beat_last_tick_age_seconds") == float("inf")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) is missing")
def test_promtool_finds_nothing_to_say_about_the_metrics(clean_redis: None) -> None:
    enable_stream("BTCUSDT", "trade")
    report("btcusdt@trade")
    count("btcusdt@trade", trades=10)
    sync_redis().hincrby(PERIODIC_ERRORS, "flush", 1)
    result = subprocess.run(["promtool", "check", "metrics"], input=render(), capture_output=True, check=False)
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stdout + result.stderr


class RoundTrips:
    """Counts the requests sent to Redis (a pipeline is one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original: Callable[..., None] = redis.connection.AbstractConnection.send_packed_command

        def counted(connection: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            original(connection, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)


@pytest.fixture
def many_streams(clean_redis: None) -> Iterator[int]:
    """1,500 streams reporting, each with its counters (the statuses of a large deployment)."""
    n = 1500
    client = sync_redis()
    with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            sid = stream_id(f"S{i:04d}USDT", "trade")
            pipe.hset(status_key(sid), mapping={"state": "connected", "last_frame_age": "0.1", "updated_at": "0"})
            pipe.hincrby(counters_key(sid), "trades", i)
        pipe.execute()
    yield n


def test_a_scrape_costs_the_same_few_round_trips_for_1500_streams(many_streams: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    trips = RoundTrips(monkeypatch)
    text = render().decode()
    assert text.count('collector_stream_trades_total{stream="') == many_streams
    # The status SCAN (500 keys a call over ~3,000 keys), one pipeline for the statuses, one for the
    # counters and the rest, two for the buffer: not one request per stream.
    assert trips.count <= 15, trips.count



@pytest.mark.django_db(transaction=True)  # the live page's reader closes its thread's connection
def test_the_status_page_the_metrics_and_the_live_page_show_one_state_from_one_rule(
        clean_redis: None, settings: Any) -> None:
    # The "stalled / not running" rule was written three times (health, metrics, the live page's state).
    from web.live.state import streams_state
    from workers.health import streams_report
    from workers.status import NOT_RUNNING, STALLED

    settings.COLLECTOR_STALE_AFTER = 5.0
    for symbol in ("BTCUSDT", "ETHUSDT", "XRPUSDT"):
        enable_stream(symbol, "trade")
    report("btcusdt@trade")
    report("ethusdt@trade", stuck_for=30.0)  # frames arrive, trades wait and nothing is handed on
    expected = {"btcusdt@trade": "connected", "ethusdt@trade": STALLED, "xrpusdt@trade": NOT_RUNNING}
    assert {s["stream"]: s["state"] for s in streams_report()["streams"]} == expected
    assert {s["stream"]: s["state"] for s in streams_state()} == expected
    scrape = samples()
    assert all(scrape[("collector_stream_state", frozenset({("stream", sid), ("state", state)}))] == 1.0
               for sid, state in expected.items())
