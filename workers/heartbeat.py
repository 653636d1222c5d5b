"""The heartbeat of every stream a runtime hosts: one or two round trips to Redis for all of them.

Each beat renews every lease of the process in one script (confirming the fence) and then, in one timed
step, reads every stop flag in one MGET, hands over the evidence the client gathered (bad frames to the
dead letters, ids that went back to the audit's list) and writes every status and counter in one pipeline.
A renewal that fails is retried sooner than the next beat (the fence is running); a stream whose lease
was taken, or whose stop flag is set, is detached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Final

import orjson
import redis.asyncio

from streams.binance.backoff import RETRY
from streams.binance.streamid import StreamId
from streams.failures import is_transient
from workers.deadletters import BAD_FRAME, DeadLetter, dead_letter_async
from workers.generation import Generation
from workers.hosting import StreamHandle
from workers.keys import ID_REGRESSIONS, stop_key
from workers.leases import renew_leases
from workers.process_errors import ErrorRecorder
from workers.redis import text
from workers.reporting import Reporter

logger = logging.getLogger(__name__)

REGRESSIONS_KEPT: Final = 10_000  # trades whose id went back, kept for the audit
_STREAM_IN_FRAME: Final = re.compile(r'"stream":"([a-z0-9]+@[A-Za-z]+)"')


class Heartbeat:
    """Beats every `interval` s for the streams `hosted()` gives, until the generation stops; `detach` ends a
    stream whose lease was lost or whose stop was asked."""

    def __init__(self, client: redis.asyncio.Redis, generation: Generation, *,
                 hosted: Callable[[], list[StreamHandle]], detach: Callable[[StreamHandle, str], None],
                 reporter: Reporter, errors: ErrorRecorder, interval: float) -> None:
        self._redis = client
        self._generation = generation
        self._hosted = hosted
        self._detach = detach
        self._reporter = reporter
        self._errors = errors
        self._interval = interval

    async def run(self) -> None:
        retry = RETRY["lease renewal"].within(self._interval).backoff()
        delay = self._interval
        stop = self._generation.stop
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set() or not self._hosted():
                continue
            renewed = await self._renew_leases()
            await self._beat()
            if renewed:
                retry.reset()
                delay = self._interval
            else:
                delay = retry.next_delay()  # sooner than a beat: the fence is running

    async def _renew_leases(self) -> bool:
        handles = self._live()
        if not handles:
            return True
        fence = self._generation.fence
        sent = time.monotonic()
        try:
            owned = await asyncio.wait_for(renew_leases(self._redis, [h.lease for h in handles]),
                                           timeout=max(0.01, fence.remaining()))
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._errors.note("lease renewal", exc)
            return False
        fence.confirmed(sent)
        for handle, ours in zip(handles, owned, strict=True):
            if not ours:
                self._detach(handle, "lease lost")
        return True

    async def _beat(self) -> None:
        """Stop flags, dead letters and ids that went back, statuses and counters, for every stream."""
        handles = self._live()
        if not handles:
            return
        try:
            async with asyncio.timeout(self._interval):
                flags = await self._redis.mget([stop_key(h.sid) for h in handles])
                for handle, flag in zip(handles, flags, strict=True):
                    if flag is not None and text(flag) in ("*", handle.owner):
                        self._detach(handle, "stop requested")
                await self._hand_evidence()
                await self._reporter.report_all([h for h in handles if not h.stopping], self._generation)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._errors.note("heartbeat", exc)
            return
        self._errors.recovered()

    async def _hand_evidence(self) -> None:
        """Bad frames go to the dead letters (with their stream when the frame names it), ids that went back
        to the audit's list."""
        client = self._generation.client
        letters = client.stats.dead_letters
        if letters:
            bad = [DeadLetter(BAD_FRAME, _stream_of(frame), reason, frame) for _, reason, frame in letters]
            letters.clear()
            await dead_letter_async(self._redis, bad)
        rows = []
        for handle in self._hosted():
            state = client.streams.get(handle.sid)
            if state is not None and state.regressions:
                rows += [orjson.dumps(tuple(t)) for t in state.regressions]
                state.regressions.clear()
        if rows:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.lpush(ID_REGRESSIONS, *rows)
                pipe.ltrim(ID_REGRESSIONS, 0, REGRESSIONS_KEPT - 1)
                await pipe.execute()


    def _live(self) -> list[StreamHandle]:
        return [h for h in self._hosted() if not h.stopping]


def _stream_of(frame: str) -> str:
    """The stream a bad frame names, or "-"."""
    match = _STREAM_IN_FRAME.search(frame)
    if match is None:
        return "-"
    try:
        return str(StreamId.parse(match[1]))
    except ValueError:
        return "-"
