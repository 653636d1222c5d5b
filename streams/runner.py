"""One stream runner, pluggable sinks: trades pumped from a StreamClient into a sink, nothing read ever lost.

The one-off command writes straight into the database (streams.collector's writer sink); the Celery
streams runtime hands trades to the Redis buffer (workers.handoff's buffer sink). Both pump the same
way (cryptofeed's backends are the model: one queue-driven base, one small sink per destination):
batches as they come, the sink applying backpressure while it is full or its store is away, and on a
stop everything already read is kept by the sink, which writes it within a bound or says what it could
not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from streams.binance.client import StreamClient
from streams.binance.protocol import Trade
from streams.binance.waiting import STOPPED, Stopped, unless_stopped

TAKE = 5_000  # trades taken from the client at a time


class Sink(Protocol):
    """Where trades go. `write` returns once they are handed on (or waits: backpressure); `keep` takes
    trades that must not be lost when there is no time left to wait; `close` writes what is kept, within
    `timeout` seconds, and returns how many it could not."""

    async def write(self, trades: list[Trade]) -> None: ...

    def keep(self, trades: list[Trade]) -> None: ...

    async def close(self, timeout: float) -> int: ...


class Runner:
    """`await runner.pump(stop)`: from `client` into `sink` until `stop`, `limit`, or the client ends."""

    def __init__(self, client: StreamClient, sink: Sink, *, on_batch: Callable[[list[Trade]], None] | None = None,
                 take: int = TAKE, linger: float = 0.0) -> None:
        self.client = client
        self.sink = sink
        self.received = 0
        self._on_batch = on_batch
        self._take = take
        self._linger = linger  # s to let a batch fill after its first trade: per-batch costs spread over more
        # Set while no batch is held between the client and the sink. A stream that stops hands on its last
        # trades only once this is set: they are newer than any the pump holds, and a resume point moved past
        # trades still held would leave a hole if the process died in between.
        self.idle = asyncio.Event()
        self.idle.set()

    async def pump(self, stop: asyncio.Event, limit: int | None = None) -> None:
        """Raises what ended the client (a fatal error, a failed background task)."""
        while not stop.is_set() and (limit is None or self.received < limit):
            want = self._take if limit is None else min(self._take, limit - self.received)
            batch = await unless_stopped(self.client.next_batch(want), stop)
            if isinstance(batch, Stopped) or not batch:
                return
            self.idle.clear()
            try:
                if self._linger and len(batch) < want:
                    await unless_stopped(asyncio.sleep(self._linger), stop)
                    batch += self.client.take_ready(want - len(batch))
                self.received += len(batch)
                if self._on_batch is not None:
                    self._on_batch(batch)
                if await unless_stopped(self.sink.write(batch), stop) is STOPPED:
                    self.sink.keep(batch)  # stopping: past the bound; close() writes them or says so
                    return
            finally:
                self.idle.set()

    def keep_what_was_read(self) -> int:
        """Everything already read from the sockets goes to the sink too (clean stops lose nothing)."""
        leftover = self.client.take_ready(10**9)
        if leftover:
            self.sink.keep(leftover)
            self.received += len(leftover)
        return len(leftover)
