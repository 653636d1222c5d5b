"""Real `celery worker` processes: killed without warning, stopped with SIGTERM, two at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from streams.binance.protocol import TRADE
from streams.fake.exchange import FakeExchange, running_exchange
from tests.helpers import ROOT, database_url, wait_for
from tests.workers.conftest import FAST, Beat
from tests.workers.test_supervision import assert_stored_run_equals_record, stored_ids
from workers.buffer import buffer_stats
from workers.keys import lease_key, stream_id
from workers.redis import sync_redis, text
from workers.registry import enable_stream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SID = stream_id("BTCUSDT", TRADE)


def worker_env(exchange: FakeExchange, **overrides: str) -> dict[str, str]:
    env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings",
           "DATABASE_URL": database_url(), "REDIS_URL": settings.REDIS_URL,
           "BINANCE_WS_URL": exchange.ws_url, "BINANCE_REST_URL": exchange.rest_url, "LOG_LEVEL": "INFO"}
    env.update({name: str(value) for name, value in FAST.items()})
    env.update(overrides)
    return env


@contextmanager
def celery_worker(exchange: FakeExchange, name: str, *, queues: str = "streams,celery", concurrency: int = 8,
                  python: tuple[str, ...] = (), log: Path | None = None, env: Mapping[str, str] | None = None,
                  **more_env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` process. `python`: code run before Celery starts (a skewed clock);
    `log`: a file for its output (for reading it when a test fails); `env` and `more_env`: its environment
    beyond worker_env's."""
    prefix = ["-c", f"{';'.join(python)};import sys;from celery.__main__ import main;sys.argv[0]='celery';main()"] \
        if python else ["-m", "celery"]
    output = log.open("wb") if log is not None else None
    process = subprocess.Popen(
        [sys.executable, *prefix, "-A", "project", "worker", "-Q", queues, "-P", "threads",
         "-c", str(concurrency), "-n", f"{name}@%h", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=worker_env(exchange, **{**(env or {}), **more_env}),
        stdout=output or subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if output is not None:
            output.close()


def drained() -> bool:
    stats = buffer_stats(sync_redis())
    return bool(stats["length"] == 0 and stats["trades_waiting"] == 0)


def owner() -> str:
    value = sync_redis().get(lease_key(SID))
    return text(value) if value else ""


@pytest.fixture
def fast(fast_settings: Any, clean_redis: None) -> Any:
    return fast_settings


def test_a_killed_worker_s_stream_is_restarted_with_no_gap_and_no_duplicate(fast: Any) -> None:
    with running_exchange(symbols={"BTCUSDT": 80.0}, seed=41) as ex:
        fast.BINANCE_WS_URL, fast.BINANCE_REST_URL = ex.ws_url, ex.rest_url
        enable_stream("BTCUSDT", TRADE)
        with Beat(), celery_worker(ex, "first") as first:
            wait_for(lambda: len(stored_ids("BTCUSDT")) >= 100, timeout=60)
            first.send_signal(signal.SIGKILL)  # no warning: the lease is not released
            first.wait(timeout=10)
            killed_at = ex.record("BTCUSDT")[-1].trade_id
            with celery_worker(ex, "second"):
                wait_for(lambda: "second@" in owner(), timeout=60)  # the supervisor restarted it there
                wait_for(lambda: stored_ids("BTCUSDT")[-1] > killed_at + 100, timeout=60)
                enable_stream("BTCUSDT", TRADE)
                wait_for(drained, timeout=30)
        assert_stored_run_equals_record(ex, "BTCUSDT", 200)


def test_sigterm_hands_over_and_the_next_worker_resumes_with_no_gap(fast: Any) -> None:
    with running_exchange(symbols={"BTCUSDT": 80.0}, seed=42) as ex:
        fast.BINANCE_WS_URL, fast.BINANCE_REST_URL = ex.ws_url, ex.rest_url
        enable_stream("BTCUSDT", TRADE)
        with Beat(), celery_worker(ex, "first") as first:
            wait_for(lambda: len(stored_ids("BTCUSDT")) >= 100, timeout=60)
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=30) == 0  # a warm shutdown: the stream task ended by itself
            assert owner() == ""  # and released its lease
            with celery_worker(ex, "second"):
                wait_for(lambda: "second@" in owner(), timeout=60)
                stopped_at = ex.record("BTCUSDT")[-1].trade_id
                wait_for(lambda: stored_ids("BTCUSDT")[-1] > stopped_at + 100, timeout=60)
                wait_for(drained, timeout=30)
        assert_stored_run_equals_record(ex, "BTCUSDT", 200)


def test_two_workers_and_two_supervisors_open_one_connection_per_stream(fast: Any) -> None:
    with running_exchange(symbols={"BTCUSDT": 50.0, "ETHUSDT": 50.0}, seed=43) as ex:
        fast.BINANCE_WS_URL, fast.BINANCE_REST_URL = ex.ws_url, ex.rest_url
        enable_stream("BTCUSDT", TRADE)
        enable_stream("ETHUSDT", TRADE)
        with Beat(interval=0.2), Beat(interval=0.25), celery_worker(ex, "one"), celery_worker(ex, "two"):
            wait_for(lambda: len(stored_ids("BTCUSDT")) >= 150 and len(stored_ids("ETHUSDT")) >= 150, timeout=60)
            pause = threading.Event()
            for _ in range(30):  # sample for 3 s, many supervise passes: never two connections for a stream
                assert ex.active_connections("btcusdt@trade") <= 1
                assert ex.active_connections("ethusdt@trade") <= 1
                pause.wait(0.1)
        assert ex.stats.connections_opened["btcusdt@trade"] == 1
        assert ex.stats.connections_opened["ethusdt@trade"] == 1
