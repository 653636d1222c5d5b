"""One-off collection into the database: stream client -> writer -> database, then broadcast.

The client, the writer, the broadcaster and the progress reporter run under one asyncio.TaskGroup: an
unexpected error in any of them ends the collection loudly instead of leaving a command
that reads and stores nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async

from streams.binance.client import ClientConfig, StreamClient
from streams.binance.protocol import Trade
from streams.broadcast import ALL_TRADES_GROUP, Broadcaster
from streams.runner import Runner
from streams.storage import StoreResult, last_stored_ids, store_trades
from streams.writer import TradeWriter

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """What the command shows while it runs, and its summary at the end."""

    elapsed: float = 0.0
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    pending: int = 0
    last_price: str = "-"
    reconnects: int = 0
    gaps_found: int = 0
    gaps_healed: int = 0
    missed: int = 0
    parse_errors: int = 0
    db_errors: int = 0
    broadcast_dropped: int = 0
    unwritten: int = 0
    state: str = "starting"

    @property
    def rate(self) -> float:
        return self.stored / self.elapsed if self.elapsed > 0 else 0.0


async def collect_to_database(
    config: ClientConfig,
    *,
    batch_size: int | None,
    limit: int | None,
    resume: bool,
    stop: asyncio.Event,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every: float = 0.5,
    flush_interval: float = 1.0,
    close_timeout: float = 30.0,
    store: Callable[[Sequence[Trade], str], StoreResult] = store_trades,
) -> Progress:
    """Collect `config.streams` into the database until `limit` trades, `stop`, or a fatal error. `store`
    writes each batch (the command's dead-letters what the database refuses)."""
    resume_ids = await sync_to_async(last_stored_ids)(list(config.streams)) if resume else {}
    if resume:
        logger.info("resuming after %s", resume_ids or "nothing stored yet")
    broadcaster = Broadcaster([ALL_TRADES_GROUP])

    async def stored(batch: list[Trade]) -> None:
        broadcaster.offer(batch)

    writer = TradeWriter(batch_size=batch_size, flush_interval=flush_interval, on_stored=stored, store=store)
    progress = Progress()
    started = time.monotonic()
    client = StreamClient(config, resume=resume_ids)

    def snapshot() -> Progress:
        _update(progress, client, writer, broadcaster, time.monotonic() - started)
        return progress

    async with asyncio.TaskGroup() as group:
        def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
            return group.create_task(coro, name=name)

        writer.start(spawn)
        broadcaster.start(spawn)
        reporter = group.create_task(_report(snapshot, on_progress, progress_every), name="progress")
        runner = Runner(client, writer, on_batch=lambda batch: _received(progress, batch))
        try:
            async with client:
                await runner.pump(stop, limit)
            if limit is None:  # already read from the socket: handed on too, nothing read is dropped
                progress.received += runner.keep_what_was_read()
        finally:
            reporter.cancel()
            progress.unwritten = await writer.close(timeout=close_timeout)
            await broadcaster.close()
    return snapshot()


def _received(progress: Progress, batch: list[Trade]) -> None:
    progress.received += len(batch)
    progress.last_price = batch[-1].price_text


async def _report(snapshot: Callable[[], Progress], on_progress: Callable[[Progress], None] | None,
                  every: float) -> None:
    if on_progress is None:
        return
    while True:
        await asyncio.sleep(every)
        on_progress(snapshot())


def _update(progress: Progress, client: StreamClient, writer: TradeWriter, broadcaster: Broadcaster,
            elapsed: float) -> None:
    streams = client.streams.values()
    progress.elapsed = elapsed
    progress.stored = writer.stats.stored
    progress.duplicates = writer.stats.duplicates
    progress.rejected = writer.stats.rejected
    progress.pending = writer.pending
    progress.db_errors = writer.stats.db_errors
    progress.reconnects = client.stats.reconnects
    progress.parse_errors = client.stats.parse_errors
    progress.gaps_found = sum(s.gaps_found for s in streams)
    progress.gaps_healed = sum(s.gaps_healed for s in streams)
    progress.missed = sum(s.missed for s in streams)
    progress.broadcast_dropped = broadcaster.stats.trades_dropped
    progress.state = client.stats.state
