"""Each hosted stream's status: built from the parts that know it, written to Redis with its counters (one
pipeline for every stream of the process), and sent to Flower as task events.

A status is built from the stream's handle (what it handed on), the current generation's client (the
connection, the continuity counters, the lag), the sink (a full buffer), the broadcaster (drops), and the
process's transient errors. The counters that only grow (workers.keys.COUNTED) are added to the stream's
totals in Redis as deltas, so that they outlive the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

import orjson
import redis.asyncio
from django.conf import settings

from streams.failures import describe
from workers.generation import Generation
from workers.hosting import StreamHandle
from workers.keys import COUNTED, FAILURES, counters_key, last_failure_key
from workers.process_errors import ErrorRecorder
from workers.status import StreamStatus, queue_status

FINAL_REDIS: Final = 1.0   # s for each last Redis call (statuses, failure records, lease releases)
EVENT_EVERY: Final = 30.0  # s between two task events of a stream whose state did not change (Flower)


class Reporter:
    """Statuses of the streams a runtime hosts, into `client` (Redis); `errors` are the process's own."""

    def __init__(self, client: redis.asyncio.Redis, errors: ErrorRecorder) -> None:
        self._redis = client
        self._errors = errors

    def status(self, handle: StreamHandle, generation: Generation | None, state: str | None = None) -> StreamStatus:
        """The stream's status now; `state` overrides the one the client reports (starting, stopped...)."""
        client = generation.client if generation is not None else None
        stream = client.streams.get(handle.sid) if client is not None else None
        errors, last_error = handle.errors + self._errors.count, handle.last_error or self._errors.last
        if generation is None or client is None or stream is None:
            return StreamStatus(state=state or ("stopped" if handle.stopping else "starting"), worker=handle.owner,
                                trades=handle.handed, errors=errors, last_error=last_error)
        now = time.monotonic()
        slot = stream.slot
        frame_age = None
        if slot is not None and slot.primary is not None:
            frame_age = round(now - slot.primary.last_frame_at, 3)
        waiting = generation.sink.pending_for(handle.sid) or client.backlogged
        stuck = max(client.stuck_for(handle.sid), now - handle.handed_at if waiting else 0.0)
        connected_at = client.connected_at_of(handle.sid)
        return StreamStatus(
            state=state or ("waiting for buffer room" if generation.sink.full else client.state_of(handle.sid)),
            worker=handle.owner,
            connected_for=None if connected_at is None else round(now - connected_at, 3),
            last_frame_age=frame_age,
            last_trade_age=None if stream.last_trade_at is None else round(now - stream.last_trade_at, 3),
            stuck_for=round(stuck, 3),
            trades=handle.handed,
            trades_per_s=round(handle.handed / max(now - handle.started, 1e-9), 2),
            messages=slot.frames if slot is not None else 0,
            reconnects=client.reconnects_of(handle.sid),
            gaps_found=stream.gaps_found,
            gaps_healed=stream.gaps_healed,
            missed=stream.missed,
            ids_back=stream.ids_back,
            parse_errors=client.stats.parse_errors,
            lag_ms=stream.lag_ms,
            last_trade_ts=stream.last_event_ts or None,
            connection_wait=round(generation.connection_wait, 1),
            broadcast_dropped=generation.broadcaster.stats.trades_dropped,
            errors=errors,
            last_error=last_error,
        )

    async def report_all(self, handles: list[StreamHandle], generation: Generation | None,
                         state: str | None = None) -> None:
        """Every status and counter delta in one pipeline, then the task events."""
        statuses = [(h, self.status(h, generation, state)) for h in handles]
        ttl = settings.COLLECTOR_STALE_AFTER * 2
        async with self._redis.pipeline(transaction=False) as pipe:
            for handle, status in statuses:
                queue_status(pipe, handle.sid, status, ttl)
                for name, delta in _grown(handle, status).items():
                    pipe.hincrby(counters_key(handle.sid), name, delta)
            await pipe.execute()
        for handle, status in statuses:
            for name in COUNTED:
                handle.counted[name] = getattr(status, name)
            _publish(handle, status)

    async def report(self, handle: StreamHandle, generation: Generation | None, state: str | None = None) -> None:
        """`report_all` for one stream, best effort (its first and last statuses), within FINAL_REDIS."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(FINAL_REDIS):
                await self.report_all([handle], generation, state)

    async def report_ended(self, handles: list[StreamHandle]) -> None:
        """The last statuses of streams that ended (out of any client now), and why those that failed did."""
        await asyncio.gather(*(self.report(h, None, "failed" if h.failure else "stopped") for h in handles))
        for handle in handles:
            if handle.failure is not None:
                await self.record_failure(handle)

    async def record_failure(self, handle: StreamHandle) -> None:
        """Why the stream's task failed, kept after it (the failure is logged already; Redis may be what
        failed, so this is best effort)."""
        assert handle.failure is not None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(FINAL_REDIS), self._redis.pipeline(transaction=False) as pipe:
                pipe.hincrby(FAILURES, str(handle.sid), 1)
                pipe.hincrby(counters_key(handle.sid), "task_failures", 1)
                pipe.set(last_failure_key(handle.sid),
                         orjson.dumps({"error": describe(handle.failure), "owner": handle.owner}))
                await pipe.execute()


def _grown(handle: StreamHandle, status: StreamStatus) -> dict[str, int]:
    """What grew since the last report (the stream's counters in Redis outlive its tasks)."""
    deltas = {name: getattr(status, name) - handle.counted.get(name, 0) for name in COUNTED}
    return {name: delta for name, delta in deltas.items() if delta > 0}


def _publish(handle: StreamHandle, status: StreamStatus) -> None:
    """A task event for Flower when the state changed, or every EVENT_EVERY seconds."""
    if handle.publish is None:
        return
    state, last = handle.published
    now = time.monotonic()
    if status.state != state or now - last >= EVENT_EVERY:
        handle.published = (status.state, now)
        handle.publish(status)
