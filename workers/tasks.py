"""Celery tasks: thin shells over plain functions (the functions are what the tests call directly).

Acks, pools and limits (docs/design.md, "How a stream runs, and why it is set up so"):
- run_stream runs for as long as the stream is enabled. It is acknowledged early (acks_late off) and has no
  time limit: a late-acked task running past Redis's visibility_timeout is delivered again (celery#5935).
  If its worker dies, the lease expires and the supervisor starts a new task: that, not redelivery, is
  the recovery path.
- The task's thread only hands its stream to the process's runtime (workers.runtime: one event loop, shared
  connections, batched hand-off and heartbeats) and waits for it to end.
- Stopping is cooperative: a stop flag in Redis or a lost lease, checked by the heartbeat; the worker's
  shutdown signal stops every stream of the runtime at once (SHUTDOWN). revoke(terminate=True) does
  nothing on the threads pool.
- Retries: the periodic tasks (flush, supervise, audit) are retried by their schedule, not by Celery: a
  Celery retry would only pile up behind the next tick. A transient error (streams.failures) is logged
  once per outage and counted; anything else fails the task loudly (Celery logs it with the traceback).
- Logs: the periodic tasks are ticks (project.celery.Tick): Celery's lines for each run are DEBUG, and what
  they did goes into the process's summary line (workers.summary), as do the streams a worker hosts.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task, shared_task
from celery.signals import worker_shutting_down
from django.db import close_old_connections

from project.celery import Tick, app
from streams.binance.logcontext import stream_context
from streams.failures import describe, is_transient
from workers import supervisor
from workers.keys import BEAT_SEEN, PERIODIC_ERRORS, StreamId, stream_id
from workers.redis import sync_redis
from workers.runtime import ShutdownSignal
from workers.summary import TALLY

logger = logging.getLogger(__name__)

T = TypeVar("T")

STREAMS_QUEUE = "streams"
SHUTDOWN = ShutdownSignal()  # set when this worker process starts its shutdown
_OUTAGES: dict[str, str] = {}  # periodic task -> the transient error it meets (logged once per outage)
# The beat's last tick, on the Redis server's clock (health compares it with the same clock).
_MARK_BEAT = "local t = redis.call('TIME'); redis.call('SET', KEYS[1], t[1] .. '.' .. string.format('%06d', t[2]))"


@worker_shutting_down.connect
def _on_worker_shutdown(**_: Any) -> None:
    SHUTDOWN.set()


# No time limit: Celery's default (time_limit and soft_time_limit None).
@shared_task(bind=True, name="workers.tasks.run_stream", acks_late=False,
             ignore_result=True)  # routed to the streams queue by CELERY_TASK_ROUTES
def run_stream(self: Task[..., str], symbol: str, channel: str) -> str:
    """The long-running task of one symbol stream; returns why it ended."""
    from workers.events import task_events
    from workers.runtime import runtime
    from workers.status import StreamStatus

    hostname = self.request.hostname or socket.gethostname()
    task_id = self.request.id
    assert task_id is not None  # a worker gives every task it runs an id
    tallied = task_id  # this process's summary line counts its streams
    events = task_events()

    def publish(status: StreamStatus) -> None:
        # Task events are what Flower shows live; sent from a thread of their own, never from the loop.
        events.offer(task_id, hostname, status.as_dict())
        TALLY.stream_progress(tallied, status.trades, status.errors)

    # The process's runtime hosts the stream (one event loop, shared connections); this thread waits.
    TALLY.stream_progress(tallied, 0, 0)
    try:
        sid = stream_id(symbol, channel)
        with stream_context(sid):
            outcome = runtime(SHUTDOWN).run_stream(sid, owner=f"{hostname}:{os.getpid()}:{task_id}", publish=publish)
        TALLY.stream_progress(tallied, outcome.trades, 0)
    finally:
        TALLY.stream_ended(tallied)
    return outcome.reason


def _dispatch(sid: StreamId) -> None:
    run_stream.apply_async(kwargs={"symbol": sid.symbol, "channel": sid.channel}, queue=STREAMS_QUEUE)


def _revoke(task_ids: list[str]) -> None:
    app.control.revoke(task_ids)  # one broadcast for all of them


def _periodic(name: str, work: Callable[[], T], empty: T) -> T:
    """Run a periodic task's work: a transient failure is logged once per outage (and when it ends),
    counted in Redis, and answered with `empty`; the next tick is the retry."""
    TALLY.add(f"tick {name}")
    try:
        sync_redis().eval(_MARK_BEAT, 1, BEAT_SEEN)
        result = work()
    except Exception as exc:
        if not is_transient(exc):
            TALLY.add("failed")
            raise
        TALLY.add("transient")
        close_old_connections()
        if name not in _OUTAGES:
            logger.warning("%s: %s; retried at the next tick", name, describe(exc))
        _OUTAGES[name] = describe(exc)
        try:
            sync_redis().hincrby(PERIODIC_ERRORS, name, 1)
        except Exception as redis_exc:  # Redis may be what is away: the line above says enough
            if not is_transient(redis_exc):
                raise
        return empty
    if _OUTAGES.pop(name, None) is not None:
        logger.info("%s: working again", name)
    return result


@shared_task(base=Tick, name="workers.tasks.ensure_stream", ignore_result=True)
def ensure_stream(symbol: str, channel: str) -> str:
    """The periodic task of one symbol stream (enabled in the admin): start it if nothing runs it."""
    return _periodic("ensure", lambda: supervisor.ensure_running(stream_id(symbol, channel), _dispatch), "")


@shared_task(base=Tick, name="workers.tasks.supervise_streams", ignore_result=True)
def supervise_streams() -> dict[str, list[str]]:
    from workers.registry import enabled_streams

    def work() -> dict[str, list[str]]:
        actions = supervisor.supervise(enabled_streams(), _dispatch, _revoke)
        done = {name: [str(sid) for sid in getattr(actions, name)] for name in ("started", "restarted", "stopped")}
        if actions.started or actions.restarted or actions.stopped:
            logger.info("supervise: started %s, restarted %s, stopped %s", done["started"], done["restarted"],
                        done["stopped"])
        return done

    return _periodic("supervise", work, {})


@shared_task(base=Tick, name="workers.tasks.flush_trades", ignore_result=True)
def flush_trades() -> int:
    from django.conf import settings

    from workers.buffer import flush_all

    consumer = f"{socket.gethostname()}:{os.getpid()}"  # stable per process: its pending entries come back to it

    def work() -> int:
        # A failure leaves the entries unacknowledged: they wait in the buffer for the next flush.
        result = flush_all(sync_redis(), consumer, max_seconds=max(settings.COLLECTOR_FLUSH_INTERVAL * 5, 5.0))
        TALLY.add("written", result.trades)
        return result.trades

    return _periodic("flush", work, 0)


@shared_task(base=Tick, name="workers.tasks.check_listing", ignore_result=True)
def check_listing() -> dict[str, str]:
    """Every 5 minutes (migration 0006): enabled symbols the exchange does not trade now; reported, kept enabled."""
    from workers.listing import check_trading

    return _periodic("listing", check_trading, {})


@shared_task(base=Tick, name="workers.tasks.audit_gaps", ignore_result=True)
def audit_gaps() -> dict[str, int]:
    from workers.audit import audit_enabled_streams

    return _periodic("audit", audit_enabled_streams, {})


@shared_task(base=Tick, name="workers.tasks.maintain_partitions", ignore_result=True)
def maintain_partitions() -> dict[str, list[str]]:
    """Trades partitions (PostgreSQL): make the coming months' (dropping them is the dataset's, in seal_days)."""
    from streams.partitions import maintain

    def work() -> dict[str, list[str]]:
        done = maintain()
        return {"created": done.created}

    return _periodic("partitions", work, {})


@shared_task(name="workers.tasks.seal_days", ignore_result=True)
def seal_days() -> dict[str, list[str]]:
    """Every 5 minutes (migration 0007): complete closed days sealed into the lake, cold ones left to it."""
    from workers.seal import drop_cold, publish_facts, seal_due

    def work() -> dict[str, list[str]]:
        sealed, cold = seal_due(), drop_cold()
        publish_facts()
        return {"sealed": sealed.sealed, "refused": sealed.refused, "dropped": cold.dropped}

    return _periodic("seal", work, {})


@shared_task(name="workers.tasks.scrub_lake", ignore_result=True)
def scrub_lake() -> dict[str, int]:
    """Every 10 minutes (migration 0007): a share of the sealed files and hot days verified again."""
    from workers.seal import publish_facts, scrub

    def work() -> dict[str, int]:
        done = scrub()
        publish_facts()
        return {"verified": done.verified, "damaged": len(done.damaged), "rebuilt": len(done.rebuilt),
                "hot_checked": done.hot_checked, "hot_changed": len(done.hot_changed)}

    return _periodic("scrub", work, {})
