"""Batched (or immediate) writes of trades from asyncio code, on one database thread, never losing a batch.

A transient database error (streams.failures: a restart, AdminShutdown, a full disk, a dropped
connection) keeps the batch and retries it on the one backoff schedule; a trade the database refuses
for its content is isolated by the storage and counted; anything else (a missing table, bad
credentials) ends the writer loudly. Memory is bounded by `max_pending`: at the bound `put` waits, so
the stream client stops reading and TCP pushes back (what the exchange could not deliver meanwhile is
fetched from REST on reconnect).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections

from streams.binance.backoff import RETRY, Policy
from streams.binance.protocol import Trade
from streams.failures import describe, is_transient
from streams.storage import StoreResult, store_trades

logger = logging.getLogger(__name__)

OnStored = Callable[[list[Trade]], Awaitable[None]]
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


@dataclass
class WriterStats:
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    db_errors: int = 0
    backpressure_waits: int = 0
    last_error: str = ""
    last_write_seconds: float = 0.0


class TradeWriter:
    """`await writer.put(trade)`; a background task writes.

    batch_size None is immediate mode: every trade is its own write, as soon as it arrives. Otherwise
    trades are written `batch_size` at a time, and whatever is pending after `flush_interval` seconds
    (a quiet market) or at `close()`.
    """

    def __init__(self, *, batch_size: int | None = None, flush_interval: float = 1.0,
                 max_pending: int = 100_000, on_stored: OnStored | None = None,
                 using: str = DEFAULT_DB_ALIAS, retry: Policy = RETRY["database write"],
                 store: Callable[[Sequence[Trade], str], StoreResult] = store_trades) -> None:
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max(max_pending, batch_size or 1)
        self.stats = WriterStats()
        self._on_stored = on_stored
        self._using = using
        self._store = store
        self._backoff = retry.backoff()
        self._pending: deque[Trade] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer")
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self, spawn: Spawn | None = None) -> None:
        """Start the writing task, through `spawn` when the caller supervises its tasks (a TaskGroup)."""
        spawn = spawn or (lambda coro, name: asyncio.create_task(coro, name=name))
        self._task = spawn(self._run(), "trade writer")

    async def put(self, trade: Trade) -> None:
        await self.put_many([trade])

    async def put_many(self, trades: Sequence[Trade]) -> None:
        """Queue trades for writing; waits while `max_pending` trades are already waiting."""
        if len(self._pending) >= self.max_pending:
            self.stats.backpressure_waits += 1
            logger.warning("writer: %d trades pending (the bound); holding the stream until the database "
                           "catches up (last error: %s)", len(self._pending), self.stats.last_error or "none")
            while len(self._pending) >= self.max_pending:
                self._room.clear()
                await self._room.wait()
        self._pending.extend(trades)
        self._arrived.set()

    def put_now(self, trades: Sequence[Trade]) -> None:
        """Queue trades past the bound: only for stopping, when they must not be dropped."""
        self._pending.extend(trades)
        self._arrived.set()

    # The runner's Sink (streams.runner): write with backpressure, keep past the bound when stopping.
    write = put_many
    keep = put_now

    async def close(self, timeout: float | None = None) -> int:
        """Write everything pending (retrying as usual, up to `timeout` seconds); the trades left unwritten."""
        self._closing = True
        self._arrived.set()
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=timeout)  # a failure is the supervisor's to report
            if not self._task.done():
                logger.error("writer: %d trades could not be written before the timeout", len(self._pending))
                self._task.cancel()
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_connection)
        self._thread.shutdown(wait=True)
        return len(self._pending)

    # --- the writing task -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                return
            await self._write(batch)
            for _ in batch:
                self._pending.popleft()
            self._room.set()
            if self._on_stored is not None:
                await self._on_stored(batch)

    async def _next_batch(self) -> list[Trade]:
        """The next batch to write, once it is due; empty when closing with nothing left."""
        size = self.batch_size or 1
        deadline = time.monotonic() + self.flush_interval
        while len(self._pending) < size and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and self._pending:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(remaining, 0.001) if self._pending else None)
            except TimeoutError:
                continue
        return [self._pending[i] for i in range(min(size, len(self._pending)))]

    async def _write(self, batch: list[Trade]) -> None:
        """Write `batch`, retrying database errors until it is stored (the batch is never dropped)."""
        loop = asyncio.get_running_loop()
        while True:
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(self._thread, self._store_in_thread, batch)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.stats.db_errors += 1
                self.stats.last_error = describe(exc)
                delay = self._backoff.next_delay()
                if self._backoff.attempt == 1:  # once per outage; the count and last error are in the stats
                    logger.warning("writer: database unavailable (%s); keeping %d trades and retrying",
                                   self.stats.last_error, len(batch))
                await asyncio.sleep(delay)
                continue
            if self._backoff.attempt:
                logger.info("writer: the database is back after %d attempts", self._backoff.attempt)
            self._backoff.reset()
            self.stats.last_write_seconds = time.perf_counter() - started
            self.stats.batches += 1
            self.stats.stored += result.inserted
            self.stats.duplicates += result.duplicates
            self.stats.rejected += result.rejected
            return

    def _store_in_thread(self, batch: list[Trade]) -> StoreResult:
        close_old_connections()
        try:
            return self._store(batch, self._using)
        except Exception:
            # A lost connection must not be reused: the next attempt opens a new one.
            self._close_connection()
            raise

    def _close_connection(self) -> None:
        try:
            connections[self._using].close()
        except Exception as exc:
            if not is_transient(exc):
                raise
            connections[self._using].connection = None  # dead already: forget it
            logger.debug("writer: closing a dead database connection: %s", describe(exc))
