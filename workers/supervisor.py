"""Enabled streams x leases x heartbeats -> start, restart or stop (docs/design.md, "One owner per stream",
"Dead streams come back").

A pass reads what Redis holds about every stream in one pipelined round trip (stop flag, lease, status),
decides in Python (`verdict`), and acts in a second one; 1,500 streams cost two round trips, not 6,000.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import redis
from django.conf import settings

from streams.binance.logcontext import stream_context
from workers.keys import LEASE_PREFIX, PREFIX, StreamId, lease_key, starting_key, status_key, stop_key, streams_of_keys
from workers.redis import sync_redis
from workers.status import StreamStatus, decode, is_stale, stale_reason

logger = logging.getLogger(__name__)

STOP_ANY = "*"  # a stop flag for whoever runs the stream (it was disabled)
_STOP_ANY: Final = STOP_ANY.encode()
CHUNK = 1000  # streams per pipelined round trip
# The status fields that staleness is decided on (status.is_stale, stale_reason): 4 of the 24 to parse.
_STALENESS_FIELDS: Final = ("updated_at", "state", "last_frame_age", "stuck_for")
RUNNING, STALE, START = "running", "stale", "start"


@dataclass
class Actions:
    """What one supervision pass did (logged and counted)."""

    started: list[StreamId] = field(default_factory=list)
    restarted: list[StreamId] = field(default_factory=list)
    stopped: list[StreamId] = field(default_factory=list)
    running: list[StreamId] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Seen:
    """What Redis holds about one stream: its stop flag, its lease's owner, its status (None when absent)."""

    stop: bytes | None
    owner: bytes | None
    status: StreamStatus | None


def verdict(seen: Seen) -> str:
    """RUNNING, STALE (a live lease, a stale status) or START (nobody holds the lease)."""
    # A lease without a status yet is a task in its first moments: the lease's short TTL already
    # proves it alive. A status that has stopped being renewed, or shows no frames, is stale.
    if seen.owner is None:
        return START
    return RUNNING if seen.status is None or not is_stale(seen.status) else STALE


def streams_running() -> set[StreamId]:
    """Streams that hold a lease now."""
    keys = sync_redis().scan_iter(match=f"{LEASE_PREFIX}*", count=2000)
    return set(streams_of_keys(keys, LEASE_PREFIX).values())


def ensure_running(sid: StreamId, start: Callable[[StreamId], None], actions: Actions | None = None) -> str:
    """Start `sid` unless a live task runs it; stop a stale one (it is started again once it has).
    Returns what was done: "running", "stopping stale", "starting" (dispatched already) or "started"."""
    return _supervise_chunk(sync_redis(), [sid], start, actions if actions is not None else Actions())[sid]


def read_seen(client: redis.Redis, sids: Sequence[StreamId]) -> dict[StreamId, Seen]:
    """Stop flag, lease and status of each stream, in one round trip (statuses aged on the server's clock;
    only the fields that staleness is decided on)."""
    with client.pipeline(transaction=False) as pipe:
        for sid in sids:
            pipe.get(stop_key(sid))
            pipe.get(lease_key(sid))
            pipe.hmget(status_key(sid), _STALENESS_FIELDS)
        pipe.time()
        *replies, (seconds, micros) = pipe.execute()
    now = seconds + micros / 1e6
    return {sid: Seen(replies[3 * i], replies[3 * i + 1], _status(replies[3 * i + 2], now))
            for i, sid in enumerate(sids)}


def _status(values: list[bytes | None], now: float) -> StreamStatus | None:
    raw = {name.encode(): value for name, value in zip(_STALENESS_FIELDS, values, strict=True) if value is not None}
    return decode(raw, now) if raw else None


def _supervise_chunk(client: redis.Redis, sids: Sequence[StreamId], start: Callable[[StreamId], None],
                     actions: Actions) -> dict[StreamId, str]:
    seen = read_seen(client, sids)
    done: dict[StreamId, str] = {}
    claims: dict[StreamId, int] = {}  # stream -> position of its starting marker's SET NX in the pipeline
    with client.pipeline(transaction=False) as pipe:
        for sid in sids:
            done[sid] = _plan(pipe, sid, seen[sid], actions)
            if done[sid] == "starting":
                claims[sid] = len(pipe)
                pipe.set(starting_key(sid), "1", nx=True, px=int(settings.COLLECTOR_START_TIMEOUT * 1000))
        replies = pipe.execute()
    for sid, position in claims.items():
        if replies[position]:  # ours: no task was dispatched for it within COLLECTOR_START_TIMEOUT
            with stream_context(sid):
                start(sid)
                logger.info("no task runs it; started one")
            actions.started.append(sid)
            done[sid] = "started"
    return done


def _plan(pipe: redis.client.Pipeline, sid: StreamId, seen: Seen, actions: Actions) -> str:
    """Queue in `pipe` what `sid` needs but a start; "starting" when it needs one."""
    stop = seen.stop
    if stop == _STOP_ANY:
        pipe.delete(stop_key(sid))  # it was disabled before; it is enabled now
        stop = None
    decided = verdict(seen)
    if decided == RUNNING:
        actions.running.append(sid)
        return "running"
    if decided == STALE:
        # Alive enough to hold its lease, but stale: ask it to stop. Its lease is not taken from it (one
        # owner per stream): it releases the lease when it stops, at its next heartbeat, or
        # the lease expires; the next pass then starts a new task, which resumes where it ended.
        assert seen.owner is not None
        if stop != seen.owner:
            with stream_context(sid):
                logger.warning("task %s is stale (%s); asking it to stop, a new task starts when it has",
                               seen.owner.decode(), stale_reason(seen.status))
            pipe.set(stop_key(sid), seen.owner, ex=int(settings.COLLECTOR_LEASE_TTL * 4))
            actions.restarted.append(sid)
        return "stopping stale"
    # A dispatched task that has not taken its lease within COLLECTOR_START_TIMEOUT is dispatched again: its
    # message may have been lost with a broker connection (kombu's BRPOP takes it off the queue before the
    # reply reaches the worker). A second task for a stream that got going exits at once: the lease says so.
    # The caller claims the starting marker (SET NX PX) and starts it if the marker is its own.
    return "starting"


def request_stop(sid: StreamId, revoke: Callable[[list[str]], None] | None = None) -> None:
    """Ask whoever runs `sid` to stop (cooperatively, at its next heartbeat)."""
    request_stops([sid], revoke)


def request_stops(sids: Sequence[StreamId], revoke: Callable[[list[str]], None] | None = None) -> None:
    """`request_stop` for many streams in one round trip. A stream already asked is not asked again: its
    task is revoked once (one broadcast for all of them), not at every supervision pass."""
    client = sync_redis()
    with client.pipeline(transaction=False) as pipe:
        for sid in sids:
            pipe.set(stop_key(sid), STOP_ANY, ex=int(settings.COLLECTOR_LEASE_TTL * 4), nx=True)
            pipe.delete(starting_key(sid))
            pipe.get(lease_key(sid))
        replies = pipe.execute()
    newly = [owner for asked, owner in zip(replies[0::3], replies[2::3], strict=True) if asked and owner]
    if revoke is not None and newly:
        # The fallback for tasks still waiting in the queue; a running one stops itself at its heartbeat.
        revoke([owner.decode().rsplit(":", 1)[-1] for owner in newly])


def supervise(enabled: Iterable[StreamId], start: Callable[[StreamId], None],
              revoke: Callable[[list[str]], None] | None = None) -> Actions:
    """One pass: every enabled stream runs, every running stream is enabled."""
    actions = Actions()
    wanted = sorted(set(enabled))
    client = sync_redis()
    for i in range(0, len(wanted), CHUNK):
        _supervise_chunk(client, wanted[i:i + CHUNK], start, actions)
    unwanted = sorted(streams_running() - set(wanted))
    for sid in unwanted:
        with stream_context(sid):
            logger.info("running but not enabled; stopping it")
    request_stops(unwanted, revoke)
    actions.stopped.extend(unwanted)
    client.set(f"{PREFIX}:supervised-at", f"{time.time():.3f}")
    return actions
