"""Fixtures for the Celery side: fast timings, a clean Redis, a real in-process worker, a stand-in beat."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

from project.celery import app
from tests.helpers import wait_for
from workers.redis import sync_redis

FAST = {
    "COLLECTOR_HEARTBEAT_INTERVAL": 0.3, "COLLECTOR_LEASE_TTL": 2.0, "COLLECTOR_STALE_AFTER": 3.0,
    "COLLECTOR_RECLAIM_IDLE": 5.0, "BINANCE_BACKOFF_BASE": 0.05, "BINANCE_BACKOFF_CAP": 0.5,
    "BINANCE_SILENCE_TIMEOUT": 0.5, "BINANCE_PROBE_TIMEOUT": 0.5,
}


@pytest.fixture
def fast_settings(settings: Any) -> Any:
    for name, value in FAST.items():
        setattr(settings, name, value)
    return settings


@pytest.fixture
def celery_worker_threads(clean_redis: None) -> Iterator[Any]:
    """A real Celery worker (threads pool) in this process, consuming both queues from the real broker."""
    from workers.tasks import SHUTDOWN

    with start_worker(app, pool="threads", concurrency=12, queues=["streams", "celery"], perform_ping_check=False,
                      shutdown_timeout=30.0, loglevel="WARNING") as worker:
        try:
            yield worker
        finally:
            SHUTDOWN.set()  # what the worker_shutting_down signal does in a real worker
            wait_for(lambda: not sync_redis().keys("collector:lease:*"), timeout=30)
    SHUTDOWN.clear()


class Beat:
    """Sends the beat's periodic tasks through the real broker, as `celery beat` would, faster."""

    def __init__(self, interval: float = 0.3) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="test-beat")

    def __enter__(self) -> Beat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from workers.tasks import flush_trades, supervise_streams

        while not self._stop.wait(self.interval):
            supervise_streams.delay()
            flush_trades.delay()
