"""Best-effort broadcast of stored trades to channel-layer groups: never blocks or slows ingestion.

Batches wait in a small bounded queue for one sender task; when the queue is full, or the layer is
missing, slow or down, batches are dropped and counted: ingestion never waits on the browsers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer, get_channel_layer
from redis.exceptions import RedisError

from streams.binance.protocol import Trade

logger = logging.getLogger(__name__)

ALL_TRADES_GROUP = "binance_data"
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


def _create_task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.create_task(coro, name=name)

MESSAGE_TYPE = "trades.batch"


def symbol_group(symbol: str) -> str:
    return f"trades.{symbol.lower()}"


def trade_message(trade: Trade) -> dict[str, Any]:
    """A trade as consumers get it: the seed's names, exact decimal strings, exchange times in ms."""
    return {
        "ticker_symbol": trade.symbol,
        "channel": trade.channel,
        "trade_id": trade.trade_id,
        "price": trade.price_text,
        "volume": trade.quantity_text,
        "trade_ts": _millis(trade.trade_ts),
        "event_ts": _millis(trade.event_ts),
        "is_market_maker": trade.is_buyer_maker,
    }


def _millis(ts: int) -> int:
    """Browsers get milliseconds (JavaScript's own unit), whether the exchange sent ms or µs."""
    return ts // 1000 if ts >= 10**14 else ts


def batch_json(trades: Sequence[Trade]) -> str:
    """A batch as one JSON array, encoded once for every group (and forwarded to browsers as it is)."""
    return orjson.dumps([trade_message(t) for t in trades]).decode()


@dataclass
class BroadcastStats:
    batches_sent: int = 0
    trades_sent: int = 0
    batches_dropped: int = 0
    trades_dropped: int = 0
    last_error: str = ""


class Broadcaster:
    """`broadcaster.offer(trades)` from the ingestion path; sends happen on a task of their own."""

    def __init__(self, groups: Sequence[str] = (ALL_TRADES_GROUP,), *, per_symbol: bool = False,
                 layer: BaseChannelLayer | None = None, queue_size: int = 100, timeout: float = 1.0) -> None:
        self.groups = tuple(groups)
        self.per_symbol = per_symbol
        self.stats = BroadcastStats()
        self._layer = layer
        self._queue: asyncio.Queue[list[Trade] | None] = asyncio.Queue(maxsize=queue_size)
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None

    def start(self, spawn: Spawn | None = None) -> None:
        """Start the sender task, through `spawn` when the caller supervises its tasks (a TaskGroup)."""
        if self._layer is None:
            self._layer = get_channel_layer()
        if self._layer is None:
            logger.warning("no channel layer configured: trades are stored but not broadcast")
            return
        spawn = spawn or _create_task
        self._task = spawn(self._send_forever(), "broadcaster")

    def offer(self, trades: list[Trade]) -> None:
        """Queue a batch for sending, or drop it (counted) when the sender is behind."""
        if self._task is None or not trades:
            return
        try:
            self._queue.put_nowait(trades)
        except asyncio.QueueFull:
            self._dropped(trades, "the broadcast queue is full")

    async def close(self) -> None:
        """Send what is queued (bounded by the timeout), then end the sender; idempotent."""
        if self._task is None or self._task.done():
            return
        try:
            self._queue.put_nowait(None)
            await asyncio.wait_for(self._task, self._timeout * 2)
        except (asyncio.QueueFull, TimeoutError):
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _send_forever(self) -> None:
        while (trades := await self._queue.get()) is not None:
            await self._send(trades)

    async def _send(self, trades: list[Trade]) -> None:
        assert self._layer is not None
        whole = {"type": MESSAGE_TYPE, "count": len(trades), "trades": batch_json(trades)}
        sends = [(group, whole) for group in self.groups]
        if self.per_symbol:
            symbols = sorted({t.symbol for t in trades})
            for symbol in symbols:  # a stream task has one symbol: its batch is encoded once for both groups
                chosen = trades if len(symbols) == 1 else [t for t in trades if t.symbol == symbol]
                part = whole if chosen is trades else {"type": MESSAGE_TYPE, "count": len(chosen),
                                                       "trades": batch_json(chosen)}
                sends.append((symbol_group(symbol), part))
        for group, message in sends:
            try:
                await asyncio.wait_for(self._layer.group_send(group, message), self._timeout)
            except (RedisError, ChannelFull, OSError, TimeoutError) as exc:
                self._dropped(trades, f"{type(exc).__name__}: {exc}")
                return
        self.stats.batches_sent += 1
        self.stats.trades_sent += len(trades)

    def _dropped(self, trades: list[Trade], why: str) -> None:
        first = self.stats.batches_dropped == 0 or why != self.stats.last_error
        self.stats.batches_dropped += 1
        self.stats.trades_dropped += len(trades)
        self.stats.last_error = why
        if first:
            logger.warning("broadcast dropped %d trades (%s); storage goes on", len(trades), why)
