"""The body of a stream task: lease, resume, stream, hand trades to the buffer, heartbeat, stop cleanly.

One runner owns the cross-cutting work (STYLE.md): the lease, the heartbeat with stats, the stop
conditions and the hand-off; the stream client does the exchange's part. Tasks call `run_stream_until_stopped`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from streams.binance.client import StreamClient
from streams.binance.protocol import Trade
from streams.binance.waiting import Stopped, unless_stopped
from streams.broadcast import ALL_TRADES_GROUP, Broadcaster
from streams.config import client_config
from streams.storage import last_stored_ids
from workers.budget import take_connection_slot
from workers.buffer import BufferFull, append_trades
from workers.keys import last_id_key, starting_key, stop_key, stream_id
from workers.leases import Lease
from workers.redis import async_redis
from workers.status import write_status

logger = logging.getLogger(__name__)

_TAKE = 5_000
_STOP_POLL = 0.2  # seconds between checks of the worker's shutdown flag
_BUFFER_RETRY = 1.0  # seconds between attempts while the buffer is full


@dataclass
class Outcome:
    """Why a stream task ended, and what it handed on."""

    reason: str
    trades: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


class _Stop(Exception):
    """Raised inside the runner when it must end (lease lost, stop requested, worker shutting down)."""


async def run_stream_until_stopped(symbol: str, channel: str, *, owner: str, shutdown: threading.Event,
                                   on_stats: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
    """Run stream (symbol, channel) while this task holds its lease; see the module docstring."""
    sid = stream_id(symbol, channel)
    client = async_redis()
    lease = Lease(client, sid, owner, settings.COLLECTOR_LEASE_TTL)
    try:
        if not await lease.acquire():
            logger.info("%s: another task holds the lease; nothing to do", sid)
            return Outcome("lease held by another task")
        await client.delete(starting_key(sid))  # started: the supervisor may dispatch again if this dies
        try:
            runner = _Runner(sid, symbol, channel, owner=owner, redis_client=client, lease=lease,
                             shutdown=shutdown, on_stats=on_stats)
            return await runner.run()
        finally:
            await lease.release()
    finally:
        await client.aclose()


class _Runner:
    def __init__(self, sid: str, symbol: str, channel: str, *, owner: str, redis_client: redis.asyncio.Redis,
                 lease: Lease, shutdown: threading.Event, on_stats: Callable[[dict[str, Any]], None] | None
                 ) -> None:
        self.sid, self.owner = sid, owner
        self.key = (symbol.upper(), channel)
        self.redis = redis_client
        self.lease = lease
        self.shutdown = shutdown
        self.on_stats = on_stats
        self.stopping = asyncio.Event()
        self.reason = "stopped"
        self.handed = 0
        self.connection_wait = 0.0
        self.buffer_full = False
        self.started = time.monotonic()
        self.last_frames = -1
        self.last_frame_at: float | None = None
        self.broadcaster = Broadcaster([ALL_TRADES_GROUP], per_symbol=True)
        self.client: StreamClient | None = None

    async def run(self) -> Outcome:
        await self._report("starting")
        resume = await self._resume_point()
        logger.info("%s: started by %s, resuming after %s", self.sid, self.owner, resume or "nothing stored")
        self.client = StreamClient(client_config([self.key]), resume=resume, before_connect=self._take_slot)
        self.broadcaster.start()
        tasks = [asyncio.create_task(self._heartbeat(), name=f"heartbeat {self.sid}"),
                 asyncio.create_task(self._watch_shutdown(), name=f"shutdown {self.sid}")]
        try:
            async with self.client:
                await self._pump()
            await self._hand_over(self.client.take_ready(10**9))  # already read: not to be lost
        finally:
            self.stopping.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.broadcaster.close()
            await self._report("stopped")
        logger.info("%s: stopped (%s) after handing %d trades to the buffer", self.sid, self.reason, self.handed)
        return Outcome(self.reason, self.handed, self._stats("stopped"))

    async def _pump(self) -> None:
        assert self.client is not None
        while not self.stopping.is_set():
            batch = await unless_stopped(self.client.next_batch(_TAKE), self.stopping)
            if isinstance(batch, Stopped) or not batch:
                return
            await self._hand_over(batch)

    async def _hand_over(self, batch: list[Trade]) -> None:
        """Append to the buffer (waiting while it is full), remember the last id, broadcast."""
        if not batch:
            return
        while True:
            try:
                await append_trades(self.redis, batch)
                break
            except BufferFull:
                if not self.buffer_full:
                    logger.error("%s: the hand-off buffer is full; holding the stream", self.sid)
                self.buffer_full = True
                await asyncio.sleep(_BUFFER_RETRY)
        self.buffer_full = False
        await self.redis.set(last_id_key(self.sid), batch[-1].trade_id)
        self.handed += len(batch)
        self.broadcaster.offer(batch)

    async def _resume_point(self) -> dict[tuple[str, str], int]:
        """The newer of the last stored id and the last id handed to the buffer (not flushed yet)."""
        stored = await sync_to_async(_last_stored_then_close, thread_sensitive=False)(self.key)
        handed = await self.redis.get(last_id_key(self.sid))
        candidates = [value for value in (stored.get(self.key), int(handed) if handed else None) if value]
        return {self.key: max(candidates)} if candidates else {}

    async def _take_slot(self) -> None:
        self.connection_wait = await take_connection_slot(
            self.redis, limit=settings.COLLECTOR_CONNECTION_BUDGET, window=settings.COLLECTOR_CONNECTION_WINDOW)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(settings.COLLECTOR_HEARTBEAT_INTERVAL)
            if not await self.lease.renew():
                self._stop("lease lost")
            stop = await self.redis.get(stop_key(self.sid))
            if stop is not None and stop.decode() in ("*", self.owner):
                self._stop("stop requested")
            await self._report("waiting for buffer room" if self.buffer_full else None)

    async def _watch_shutdown(self) -> None:
        while not self.shutdown.is_set():
            await asyncio.sleep(_STOP_POLL)
        self._stop("worker shutting down")

    def _stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            logger.info("%s: stopping: %s", self.sid, reason)
            self.reason = reason
            self.stopping.set()

    async def _report(self, state: str | None) -> None:
        stats = self._stats(state)
        await write_status(self.redis, self.sid, stats, ttl=settings.COLLECTOR_STALE_AFTER * 2)
        if self.on_stats is not None:
            self.on_stats(stats)

    def _stats(self, state: str | None) -> dict[str, Any]:
        client = self.client
        if client is None:
            return {"state": state or "starting", "worker": self.owner}
        stream = client.streams[self.key]
        frames = client.messages
        if frames != self.last_frames:
            self.last_frames, self.last_frame_at = frames, time.time()
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "state": state or client.stats.state,
            "worker": self.owner,
            "connected_since": client.stats.connected_since,
            "last_message_at": stream.last_event_ts / 1000 if stream.last_event_ts else None,
            "last_frame_at": self.last_frame_at,
            "trades": self.handed,
            "trades_per_s": round(self.handed / elapsed, 2),
            "messages": frames,
            "reconnects": client.stats.reconnects,
            "gaps_found": stream.gaps_found,
            "gaps_healed": stream.gaps_healed,
            "missed": stream.missed,
            "parse_errors": client.stats.parse_errors,
            "lag_ms": max(0, int(time.time() * 1000) - stream.last_event_ts) if stream.last_event_ts else None,
            "connection_wait": round(self.connection_wait, 1),
            "broadcast_dropped": self.broadcaster.stats.trades_dropped,
        }


def _last_stored_then_close(key: tuple[str, str]) -> dict[tuple[str, str], int]:
    """The last stored id, on a short-lived executor thread whose connection must not linger."""
    try:
        return last_stored_ids([key])
    finally:
        connection.close()
