"""Enabled streams x leases x heartbeats -> start, restart or stop (DESIGN.md promises 3 and 4)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.conf import settings

from project.logs import stream_context
from workers.keys import PREFIX, lease_key, starting_key, stop_key
from workers.redis import sync_redis
from workers.status import is_stale, read_status, stale_reason

logger = logging.getLogger(__name__)

STOP_ANY = "*"  # a stop flag for whoever runs the stream (it was disabled)


@dataclass
class Actions:
    """What one supervision pass did (logged and counted)."""

    started: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)


def streams_running() -> set[str]:
    """Streams that hold a lease now."""
    prefix = f"{PREFIX}:lease:"
    return {key.decode()[len(prefix):] for key in sync_redis().scan_iter(match=f"{prefix}*", count=500)}


def ensure_running(sid: str, start: Callable[[str], None], actions: Actions | None = None) -> str:
    """Start `sid` unless a live task runs it; stop a stale one (it is started again once it has).
    Returns what was done."""
    with stream_context(sid):
        return _ensure_running(sid, start, actions if actions is not None else Actions())


def _ensure_running(sid: str, start: Callable[[str], None], actions: Actions) -> str:
    client = sync_redis()
    if client.get(stop_key(sid)) == STOP_ANY.encode():
        client.delete(stop_key(sid))  # it was disabled before; it is enabled now
    owner = client.get(lease_key(sid))
    status = read_status(sid)
    # A lease without a status yet is a task in its first moments: the lease's short TTL already
    # proves it alive. A status that has stopped being renewed, or shows no frames, is stale.
    if owner is not None and (status is None or not is_stale(status)):
        actions.running.append(sid)
        return "running"
    if owner is not None:
        # Alive enough to hold its lease, but stale: ask it to stop. Its lease is not taken from it (one
        # owner per stream, promise 3): it releases the lease when it stops, at its next heartbeat, or
        # the lease expires; the next pass then starts a new task, which resumes where it ended.
        owner_text = owner.decode()
        if client.get(stop_key(sid)) != owner:
            logger.warning("task %s is stale (%s); asking it to stop, a new task starts when it has",
                           owner_text, stale_reason(status))
            client.set(stop_key(sid), owner_text, ex=int(settings.COLLECTOR_LEASE_TTL * 4))
            actions.restarted.append(sid)
        return "stopping stale"
    # A dispatched task that has not taken its lease within COLLECTOR_START_TIMEOUT is dispatched again: its
    # message may have been lost with a broker connection (kombu's BRPOP takes it off the queue before the
    # reply reaches the worker). A second task for a stream that got going exits at once: the lease says so.
    if not client.set(starting_key(sid), "1", nx=True, px=int(settings.COLLECTOR_START_TIMEOUT * 1000)):
        return "starting"
    start(sid)
    logger.info("no task runs it; started one")
    actions.started.append(sid)
    return "started"


def request_stop(sid: str, revoke: Callable[[str], None] | None = None) -> None:
    """Ask whoever runs `sid` to stop (cooperatively, at its next heartbeat)."""
    client = sync_redis()
    client.set(stop_key(sid), STOP_ANY, ex=int(settings.COLLECTOR_LEASE_TTL * 4))
    client.delete(starting_key(sid))
    owner = client.get(lease_key(sid))
    if revoke is not None and owner is not None:
        task_id = owner.decode().rsplit(":", 1)[-1]
        revoke(task_id)  # the fallback for a task still waiting in the queue; a running one stops itself


def supervise(enabled: Iterable[str], start: Callable[[str], None],
              revoke: Callable[[str], None] | None = None) -> Actions:
    """One pass: every enabled stream runs, every running stream is enabled."""
    actions = Actions()
    enabled = set(enabled)
    for sid in sorted(enabled):
        ensure_running(sid, start, actions)
    for sid in sorted(streams_running() - enabled):
        with stream_context(sid):
            logger.info("running but not enabled; stopping it")
        request_stop(sid, revoke)
        actions.stopped.append(sid)
    sync_redis().set(f"{PREFIX}:supervised-at", f"{time.time():.3f}")
    return actions


