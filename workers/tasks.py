"""Celery tasks: thin shells over plain functions (the functions are what the tests call directly).

Acks, pools and limits (see the README's "Processes"):
- run_stream runs for as long as the stream is enabled. It is acknowledged early (acks_late off) and has no
  time limit: a late-acked task running past Redis's visibility_timeout is delivered again (celery#5935).
  If its worker dies, the lease expires and the supervisor starts a new task: that, not redelivery, is
  the recovery path.
- Stopping is cooperative: a stop flag in Redis or a lost lease, checked by the heartbeat; the worker's
  shutdown signal sets a process-wide flag. revoke(terminate=True) does nothing on the threads pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_shutting_down
from django.db import DatabaseError, close_old_connections

from project.celery import app
from workers import supervisor
from workers.keys import BEAT_SEEN, parse_stream_id, stream_id
from workers.redis import sync_redis

logger = logging.getLogger(__name__)

STREAMS_QUEUE = "streams"
_EVENT_NAMES = {"worker": "stream_owner", "state": "stream_state"}
SHUTDOWN = threading.Event()  # set when this worker process starts its shutdown


@worker_shutting_down.connect
def _on_worker_shutdown(**_: Any) -> None:
    SHUTDOWN.set()


@shared_task(bind=True, name="workers.tasks.run_stream", acks_late=False, time_limit=None, soft_time_limit=None,
             ignore_result=True)  # routed to the streams queue by CELERY_TASK_ROUTES
def run_stream(self: Task, symbol: str, channel: str) -> str:
    """The long-running task of one symbol stream; returns why it ended."""
    from workers.streaming import run_stream_until_stopped

    owner = f"{self.request.hostname or socket.gethostname()}:{os.getpid()}:{self.request.id}"

    def publish(stats: dict[str, Any]) -> None:
        # Task events are what Flower shows live; update_state alone is invisible to it.
        # "worker" and "state" are Celery's own task fields (Flower breaks if "worker" is a string).
        fields = {_EVENT_NAMES.get(k, k): v for k, v in stats.items() if v is not None}
        self.send_event("task-streaming", **fields)
        self.update_state(state="STREAMING", meta=stats)

    outcome = asyncio.run(run_stream_until_stopped(symbol, channel, owner=owner, shutdown=SHUTDOWN,
                                                   on_stats=publish))
    return outcome.reason


def _dispatch(sid: str) -> None:
    symbol, channel = parse_stream_id(sid)
    run_stream.apply_async(kwargs={"symbol": symbol, "channel": channel}, queue=STREAMS_QUEUE)


def _revoke(task_id: str) -> None:
    app.control.revoke(task_id)


def _mark_beat() -> None:
    sync_redis().set(BEAT_SEEN, f"{time.time():.3f}")


@shared_task(name="workers.tasks.ensure_stream", ignore_result=True)
def ensure_stream(symbol: str, channel: str) -> str:
    """The periodic task of one symbol stream (enabled in the admin): start it if nothing runs it."""
    _mark_beat()
    return supervisor.ensure_running(stream_id(symbol, channel), _dispatch)


@shared_task(name="workers.tasks.supervise_streams", ignore_result=True)
def supervise_streams() -> dict[str, list[str]]:
    from workers.registry import enabled_streams

    _mark_beat()
    actions = supervisor.supervise([stream_id(s, c) for s, c in enabled_streams()], _dispatch, _revoke)
    if actions.started or actions.restarted or actions.stopped:
        logger.info("supervise: started %s, restarted %s, stopped %s", actions.started, actions.restarted,
                    actions.stopped)
    return {"started": actions.started, "restarted": actions.restarted, "stopped": actions.stopped}


@shared_task(name="workers.tasks.flush_trades", ignore_result=True)
def flush_trades() -> int:
    from django.conf import settings

    from workers.buffer import flush_all

    _mark_beat()
    consumer = f"{socket.gethostname()}:{os.getpid()}"  # stable per process: its pending entries come back to it
    try:
        result = flush_all(sync_redis(), consumer, max_seconds=max(settings.COLLECTOR_FLUSH_INTERVAL * 5, 5.0))
    except DatabaseError as exc:
        # Nothing was acknowledged: the entries wait in the buffer for the next flush (promise 5).
        logger.warning("flush: database unavailable (%s); the buffer keeps the trades", exc)
        close_old_connections()
        return 0
    return int(getattr(result, "trades", result) or 0)


@shared_task(name="workers.tasks.audit_gaps", ignore_result=True)
def audit_gaps() -> dict[str, int]:
    from workers.audit import audit_enabled_streams

    _mark_beat()
    return audit_enabled_streams()
