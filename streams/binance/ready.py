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


class ReadyQueue:
    """`added` when a stream's sequencer has more trades ready; `take` them across streams, oldest first.
    A stream is its sequencer here (hashed by identity: cheaper on every trade than a StreamId)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0  # trades ready, over every stream
        self._streams: dict[Sequencer, None] = {}  # the sequencers with trades ready, in the order they had them
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def added(self, sequencer: Sequencer, count: int) -> None:
        """`count` more trades are ready in a stream's `sequencer` (on every trade: kept short)."""
        self.count += count
        if sequencer not in self._streams:
            self._streams[sequencer] = None
        self._ready.set()

    def take(self, limit: int) -> list[Trade]:
        """Up to `limit` ready trades, the streams in the order they became ready."""
        batch: list[Trade] = []
        streams = self._streams
        while streams and len(batch) < limit:
            sequencer = next(iter(streams))
            batch += sequencer.take(limit - len(batch))
            if not sequencer.ready:
                del streams[sequencer]
        self._taken(len(batch))
        return batch

    def take_stream(self, sequencer: Sequencer) -> list[Trade]:
        """Every ready trade of one stream."""
        if sequencer not in self._streams:
            return []
        del self._streams[sequencer]
        taken = sequencer.take()
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
