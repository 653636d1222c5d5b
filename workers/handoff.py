"""The runtime's sink into the Redis hand-off buffer, and the order of a stopping stream's last hand-over.

Trades go to the buffer a batch at a time, one script per batch, each stream's resume point (its last id
handed on) moved in the same step; while the buffer is full or Redis is away the batch is retried on the
hand-off policy and every stream of the process waits (`full` says so on the status).

The order matters when streams stop: a stream's resume point must never pass a trade not handed on yet,
or a process that dies in between leaves a hole behind it that no task fetches again. So what the pump
holds goes first, then what the stopped client still has (`hand_over_after_the_pump`, `settled`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import redis.asyncio

from streams.binance.backoff import RETRY
from streams.binance.client import StreamClient
from streams.binance.protocol import Trade
from streams.binance.streamid import StreamId, by_stream
from streams.failures import is_transient
from streams.runner import Runner
from workers.buffer import BufferFull, append_trades
from workers.keys import last_id_key
from workers.process_errors import ErrorRecorder

logger = logging.getLogger(__name__)

FINAL_HANDOVER: Final = 3.0  # s to hand what was read to the buffer once stopping


class BufferSink:
    """The runner's sink (streams.runner.Sink) for the Redis buffer. `on_handed` is told of every batch
    handed on; `errors` records what was retried."""

    def __init__(self, client: redis.asyncio.Redis, *, on_handed: Callable[[list[Trade]], None],
                 errors: ErrorRecorder) -> None:
        self._redis = client
        self._on_handed = on_handed
        self._errors = errors
        self.full = False  # the buffer holds its bound: every stream of the process waits
        self.pending: list[Trade] = []  # kept when there was no time to wait: written by `close`

    async def write(self, trades: list[Trade]) -> None:
        backoff = RETRY["hand-off"].backoff()
        while True:
            try:
                await append_trades(self._redis, trades, last_ids=last_ids(trades))
            except BufferFull:
                if not self.full:
                    logger.error("the hand-off buffer is full; holding every stream of this process")
                self.full = True
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._errors.note("hand-off to the buffer", exc)
            else:
                self.full = False
                self._errors.recovered()
                self._on_handed(trades)
                return
            await asyncio.sleep(backoff.next_delay())

    def keep(self, trades: list[Trade]) -> None:
        self.pending += trades

    def drop(self, sid: StreamId) -> int:
        """Forget the kept trades of one stream (its resume point was not moved past them)."""
        kept = [t for t in self.pending if not sid.owns(t)]
        dropped, self.pending = len(self.pending) - len(kept), kept
        return dropped

    def pending_for(self, sid: StreamId) -> bool:
        return any(sid.owns(t) for t in self.pending)

    async def close(self, timeout: float) -> int:
        """Write what was kept within `timeout` s; the trades that could not be."""
        if not self.pending:
            return 0
        pending, self.pending = self.pending, []
        try:
            async with asyncio.timeout(timeout):
                await self.write(pending)
        except TimeoutError:
            return len(pending)
        return 0


def last_ids(trades: list[Trade]) -> dict[str, int]:
    """The resume-point key and last id of each stream in a batch (a stream's trades come in id order)."""
    return {last_id_key(sid): handed[-1].trade_id for sid, handed in by_stream(trades).items()}


async def hand_over_after_the_pump(client: StreamClient, sink: BufferSink, pump: asyncio.Task[None] | None) -> None:
    """What the stopped client still has goes after the batch the pump holds: the pump keeps that one and
    ends first, so that no resume point passes a trade not handed on yet."""
    if pump is not None:
        await asyncio.wait({pump}, timeout=FINAL_HANDOVER)
        if not pump.done():  # it never gets here (the pump's waits end at the stop); if it did: fetch again
            logger.error("the pump did not end within %.0f s; the trades read last are left for the next tasks "
                         "to fetch again", FINAL_HANDOVER)
            sink.pending.clear()
            return
    sink.keep(client.take_ready(10**9))


async def settled(runner: Runner | None, timeout: float) -> bool:
    """Until the pump holds no batch (True), or `timeout` passed (False)."""
    if runner is None or runner.idle.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await runner.idle.wait()
    except TimeoutError:
        return False
    return True
