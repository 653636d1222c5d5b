"""Task events for Flower and the task's result state, sent from one thread per process, never from a loop.

Celery's `send_event` and `update_state` block while their publish is retried, about 20 s on a Redis blip:
on a stream's event loop that would stall the heartbeat and the fence with it. Stream
tasks `offer` their latest status here instead, which never blocks; one daemon thread sends the newest
status of each task and drops the older ones it did not get to.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any

from celery import Celery

logger = logging.getLogger(__name__)

EVENT_TYPE = "task-streaming"
STATE = "STREAMING"
# Celery's own task fields: Flower breaks if "worker" is a string, and "state" is the task's state.
_RENAMED = {"worker": "stream_owner", "state": "stream_state"}


@dataclass(frozen=True)
class _Offer:
    hostname: str
    fields: dict[str, Any]


class TaskEvents:
    """`offer(task_id, hostname, fields)` from any thread; a thread of its own publishes."""

    def __init__(self, app: Celery) -> None:
        self._app = app
        self._latest: dict[str, _Offer] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._failing = False
        self.sent = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="task-events", daemon=True)
        self._thread.start()

    def offer(self, task_id: str, hostname: str, fields: dict[str, Any]) -> None:
        with self._lock:
            self._latest[task_id] = _Offer(hostname, fields)
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._latest = self._latest, {}
            for task_id, offer in batch.items():
                self._send(task_id, offer)

    def _send(self, task_id: str, offer: _Offer) -> None:
        fields = {_RENAMED.get(k, k): v for k, v in offer.fields.items() if v is not None and v != ""}
        try:
            with self._app.events.default_dispatcher(hostname=offer.hostname) as dispatcher:
                dispatcher.send(EVENT_TYPE, uuid=task_id, **fields)
            self._app.backend.store_result(task_id, offer.fields, STATE)
        except Exception as exc:  # monitoring must never stop a stream: counted, logged once per outage
            self.failed += 1
            if not self._failing:
                logger.warning("task events: cannot publish (%s: %s); streams go on, Flower is not updated",
                               type(exc).__name__, exc)
            self._failing = True
            return
        self.sent += 1
        if self._failing:
            logger.info("task events: publishing again")
        self._failing = False


@functools.cache
def task_events() -> TaskEvents:
    """The process's publisher (started on first use)."""
    from project.celery import app

    return TaskEvents(app)
