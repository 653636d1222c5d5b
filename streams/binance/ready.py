"""The stream client's ready queue: which streams have trades to hand on, how many in all, and backpressure.

The trades themselves stay in each stream's sequencer until they are taken; the queue keeps the streams
that have some, in the order they became ready (so that a busy stream cannot starve a quiet one), and their
count. A consumer waits for trades and takes them in batches across streams; the connections and the
backfills wait for room while `limit` trades or more wait: the client stops reading, and TCP pushes back
(what the exchange could not deliver meanwhile is fetched from REST).
"""

from __future__ import annotations

import asyncio

from streams.binance.protocol import Trade
from streams.binance.sequencer import Sequencer
from streams.binance.streamid import StreamId


class ReadyQueue:
    """`added` when a stream's sequencer has more trades ready; `take` them across streams, oldest first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0  # trades ready, over every stream
        self._streams: dict[StreamId, Sequencer] = {}  # those with trades ready, in the order they had them
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def added(self, key: StreamId, sequencer: Sequencer, count: int) -> None:
        """`count` more trades of stream `key` are ready in its `sequencer` (on every trade: kept short)."""
        self.count += count
        if key not in self._streams:
            self._streams[key] = sequencer
        self._ready.set()

    def take(self, limit: int) -> list[Trade]:
        """Up to `limit` ready trades, the streams in the order they became ready."""
        batch: list[Trade] = []
        streams = self._streams
        while streams and len(batch) < limit:
            key, sequencer = next(iter(streams.items()))
            batch += sequencer.take(limit - len(batch))
            if not sequencer.ready:
                del streams[key]
        self._taken(len(batch))
        return batch

    def take_stream(self, key: StreamId) -> list[Trade]:
        """Every ready trade of one stream."""
        sequencer = self._streams.pop(key, None)
        taken = sequencer.take() if sequencer is not None else []
        self._taken(len(taken))
        return taken

    @property
    def backlogged(self) -> bool:
        return self.count >= self.limit

    async def wait_for_trades(self) -> None:
        """Until a trade is added, or `wake`."""
        self._ready.clear()
        await self._ready.wait()

    async def wait_for_room(self, stopping: asyncio.Event) -> None:
        """Until fewer than `limit` trades wait, `stopping` is set, or `wake`."""
        while self.backlogged and not stopping.is_set():
            self._room.clear()
            await self._room.wait()

    def wake(self) -> None:
        """Let every waiter look again (the client stops)."""
        self._ready.set()
        self._room.set()

    def _taken(self, count: int) -> None:
        self.count -= count
        if self.count < self.limit:
            self._room.set()
