"""Fixtures for the Celery side: fast timings, a clean Redis, a real in-process worker, a stand-in beat."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu.exceptions import OperationalError

from project.celery import app
from tests.helpers import wait_for
from workers.redis import sync_redis

logger = logging.getLogger(__name__)

FAST = {
    "COLLECTOR_HEARTBEAT_INTERVAL": 0.3, "COLLECTOR_LEASE_TTL": 2.0, "COLLECTOR_STALE_AFTER": 3.0,
    "COLLECTOR_RECLAIM_IDLE": 5.0, "COLLECTOR_START_TIMEOUT": 5.0, "BINANCE_BACKOFF_BASE": 0.05,
    "BINANCE_BACKOFF_CAP": 0.5, "BINANCE_SILENCE_TIMEOUT": 0.5, "BINANCE_PROBE_TIMEOUT": 0.5,
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
    """Sends the beat's periodic tasks through the real broker, as `celery beat` would, faster.
    `broker`: another Redis than the tests' own (a private server the test restarts)."""

    def __init__(self, interval: float = 0.3, broker: str | None = None) -> None:
        self.interval = interval
        self._app = Celery("beat-stand-in", broker=broker) if broker else app
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="test-beat")

    def __enter__(self) -> Beat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for task in ("workers.tasks.supervise_streams", "workers.tasks.flush_trades"):
                try:
                    self._app.send_task(task, queue="celery")
                except (OSError, OperationalError) as exc:  # a broker the test took away: the next tick retries
                    logger.debug("beat stand-in: %s", exc)
