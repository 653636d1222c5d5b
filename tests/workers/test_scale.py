"""Hundreds of streams on one streams worker: shared connections, shared budgets, one owner per stream.

The fake exchange with a few hundred symbols, real `celery worker` processes as the Procfile runs them,
the real Redis and PostgreSQL. What is stored must equal the exchange's record for every stream through
drops of a shared connection, rotations and `serverShutdown` notices; the REST weight of the backfills
after a drop stays within the budget (the fake exchange answers 429 past its limit and counts them).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from streams.binance.protocol import TRADE
from streams.fake.exchange import FakeExchange, running_exchange
from tests.helpers import wait_for
from tests.workers.conftest import Beat
from tests.workers.test_no_silent_failure import at_most_one_connection, watching
from tests.workers.test_supervision import assert_stored_run_equals_record, stored_ids
from tests.workers.test_worker_processes import celery_worker, drained
from workers.budget import RedisWeightBudget
from workers.keys import counters_key, lease_key, stream_id
from workers.redis import async_redis, sync_redis, text
from workers.registry import disable_stream, enable_stream


async def test_the_rest_weight_budget_is_shared_and_waits_for_the_next_window(clean_redis: None) -> None:
    client = async_redis()
    try:
        budgets = [RedisWeightBudget(client, budget=100, window=2) for _ in range(3)]  # three processes
        waited = await asyncio.gather(*(budget.take(25) for budget in budgets for _ in range(2)))
        assert sum(1 for w in waited if w > 0) == 2  # 4 x 25 fit the window; the other 2 waited for the next
        await budgets[0].note(95)  # the exchange says the IP used 95 already (another client)
        assert await asyncio.wait_for(budgets[1].take(10), 5) > 0
    finally:
        await client.aclose()


pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MANY = [f"S{i:03d}USDT" for i in range(120)]
# The tests' usual 2 s lease is too short for 150 streams starting at once on 2 busy cores: the fence
# (3/4 of it) would rightly drop every connection while the loop is busy starting them.
SCALE_TIMING = {"COLLECTOR_LEASE_TTL": "10", "COLLECTOR_HEARTBEAT_INTERVAL": "1", "COLLECTOR_STALE_AFTER": "20"}


def enable_all(symbols: list[str]) -> None:
    for symbol in symbols:
        enable_stream(symbol, TRADE)


def all_connected(ex: FakeExchange, symbols: list[str]) -> bool:
    return all(ex.active_connections(f"{s.lower()}@trade") == 1 for s in symbols)


def all_stored_past(symbols: list[str], marks: dict[str, int], at_least: int = 0) -> bool:
    return all((ids := stored_ids(s)) and ids[-1] > marks[s] and len(ids) >= at_least for s in symbols)


def test_many_streams_on_shared_connections_store_the_record_through_drops_rotations_and_shutdowns(
        fast_settings: Any, clean_redis: None, tmp_path: Path) -> None:
    rates = dict.fromkeys(MANY, 2.0)
    with running_exchange(symbols=rates, seed=101, max_lifetime=25.0, weight_limit=300, weight_window=5.0,
                          ping_interval=1.0, pong_timeout=3.0) as ex:  # a stalled session is dropped in seconds
        fast_settings.BINANCE_WS_URL, fast_settings.BINANCE_REST_URL = ex.ws_url, ex.rest_url
        enable_all(MANY)
        # Half the exchange's 300 per 5 s: the budget's window and the exchange's fixed one are not aligned,
        # and on a busy machine a request may reach the exchange a second after it took its weight.
        env = {"BINANCE_STREAMS_PER_CONNECTION": "40", "BINANCE_ROTATE_AFTER": "20",
               "BINANCE_REST_WEIGHT_BUDGET": "140", "BINANCE_REST_WEIGHT_WINDOW": "5", **SCALE_TIMING}
        with Beat(), celery_worker(ex, "worker", queues="celery", env=env), \
                celery_worker(ex, "streams", queues="streams", concurrency=130, log=tmp_path / "streams.log", env=env):
            wait_for(lambda: all_connected(ex, MANY), timeout=120)
            assert ex.stats.connection_attempts <= 6  # three connections carry 120 streams
            wait_for(lambda: all(stored_ids(s) for s in MANY), timeout=120)
            ex.inject("stall", symbol=MANY[0])  # the connection of 40 streams goes silent: ~40 gaps to heal
            ex.inject("shutdown", symbol=MANY[60], grace=1.0)  # another one rotates now
            marks = {s: ex.record(s)[-1].trade_id for s in MANY}
            # Rotations before the 25 s lifetime happen on their own meanwhile.
            # ... and enough of each stored for the comparison below to mean something (not a timing guess).
            wait_for(lambda: all_stored_past(MANY, marks, at_least=30), timeout=180)
            for symbol in MANY:
                disable_stream(symbol, TRADE)
            wait_for(lambda: ex.active_connections() == 0, timeout=60)
            wait_for(drained, timeout=60)
        stats = ex.stats
    assert stats.rest_429 == 0 and stats.rest_418 == 0, "the REST budget was exceeded"
    assert stats.faults["stall"] == 1 and stats.faults["shutdown"] == 1
    healed = sum(int(sync_redis().hget(counters_key(stream_id(s, TRADE)), "gaps_healed") or 0) for s in MANY)
    short = {s: (len(stored_ids(s)), len(ex.record(s))) for s in MANY if len(stored_ids(s)) < 30}
    assert not short, f"streams that stored little (stored, made): {short}"
    assert healed >= 20, f"only {healed} gaps healed: the budget was not put to the test"
    assert "REST weight budget of 140 per 5 s used up" in (tmp_path / "streams.log").read_text()
    assert stats.connection_attempts >= 3 + 2, "no connection was ever replaced: the test proves nothing"
    for symbol in MANY:
        assert_stored_run_equals_record(ex, symbol, 3)


def test_a_stream_disabled_on_a_shared_connection_is_unsubscribed_without_touching_the_others(
        fast_settings: Any, clean_redis: None, tmp_path: Path) -> None:
    symbols = MANY[:6]
    with running_exchange(symbols=dict.fromkeys(symbols, 5.0), seed=102) as ex:
        fast_settings.BINANCE_WS_URL, fast_settings.BINANCE_REST_URL = ex.ws_url, ex.rest_url
        enable_all(symbols)
        with Beat(), celery_worker(ex, "both", log=tmp_path / "both.log", env=SCALE_TIMING):
            wait_for(lambda: all_connected(ex, symbols), timeout=60)
            opened = ex.stats.connection_attempts
            disable_stream(symbols[0], TRADE)
            wait_for(lambda: ex.active_connections(f"{symbols[0].lower()}@trade") == 0, timeout=30)
            marks = {s: ex.record(s)[-1].trade_id for s in symbols[1:]}
            wait_for(lambda: all_stored_past(symbols[1:], marks), timeout=30)
            assert ex.stats.connection_attempts == opened  # UNSUBSCRIBE, not a new connection
            assert ex.active_connections() == 1 and all_connected(ex, symbols[1:])
            for symbol in symbols[1:]:
                disable_stream(symbol, TRADE)
            wait_for(lambda: ex.active_connections() == 0, timeout=30)
            wait_for(drained, timeout=30)
    for symbol in symbols:  # the first one was disabled moments after it started
        assert_stored_run_equals_record(ex, symbol, 1 if symbol == symbols[0] else 5)


def test_two_streams_workers_share_the_streams_with_one_owner_each(fast_settings: Any, clean_redis: None) -> None:
    symbols = MANY[:40]
    with running_exchange(symbols=dict.fromkeys(symbols, 3.0), seed=103) as ex:
        fast_settings.BINANCE_WS_URL, fast_settings.BINANCE_REST_URL = ex.ws_url, ex.rest_url
        enable_all(symbols)
        checks = [at_most_one_connection(ex, f"{s.lower()}@trade") for s in symbols]
        with Beat(interval=0.2), celery_worker(ex, "worker", queues="celery", env=SCALE_TIMING), \
                celery_worker(ex, "one", queues="streams", concurrency=48, env=SCALE_TIMING), \
                celery_worker(ex, "two", queues="streams", concurrency=48, env=SCALE_TIMING), \
                watching(lambda: [check() for check in checks]) as failures:
            wait_for(lambda: all_connected(ex, symbols), timeout=60)
            owners = {s: text(sync_redis().get(lease_key(stream_id(s, TRADE))) or b"") for s in symbols}
            hosts = {owner.split(":", 1)[0] for owner in owners.values()}
            marks = {s: ex.record(s)[-1].trade_id for s in symbols}
            wait_for(lambda: all_stored_past(symbols, marks), timeout=60)
            pause = threading.Event()
            deadline = time.monotonic() + 3  # many supervision passes: still one owner, one connection each
            while time.monotonic() < deadline:
                pause.wait(0.2)
            for symbol in symbols:
                disable_stream(symbol, TRADE)
            wait_for(lambda: ex.active_connections() == 0, timeout=30)
            wait_for(drained, timeout=30)
    assert not failures, failures[0]
    assert {h.split("@", 1)[0] for h in hosts} == {"one", "two"}  # both workers host streams
    for symbol in symbols:
        assert_stored_run_equals_record(ex, symbol, 3)


def test_the_pool_threads_starting_at_once_share_one_runtime(tmp_path: Path) -> None:
    # Seen as two connections for six streams: the threads pool started six stream tasks in the same
    # instant, and `functools.cache` let two of them make a runtime each (two loops, two clients).
    script = tmp_path / "race.py"
    script.write_text(
        "import threading, django\n"
        "django.setup()\n"
        "from workers import runtime as module\n"
        "start, signal = threading.Barrier(12), module.ShutdownSignal()\n"
        "got = []\n"
        "def task():\n"
        "    start.wait()\n"
        "    got.append(module.runtime(signal))\n"
        "threads = [threading.Thread(target=task) for _ in range(12)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "print(len({id(r) for r in got}))\n"
        "import os; os._exit(0)\n")  # the runtimes' loop threads are not the point here
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "DEBUG": "1", "PYTHONPATH": str(ROOT)}
    runs = [subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60, check=True).stdout.strip() for _ in range(5)]
    assert runs == ["1"] * 5
