"""The stream client: every trade id of many streams once and in order, over few shared connections.

Streams are spread over combined connections of up to `streams_per_connection` each (streams/binance/
slot.py: reconnects with backoff, live SUBSCRIBE/UNSUBSCRIBE, make-before-break rotation per connection);
each stream's continuity is a Sans-I/O `Sequencer` (streams/binance/sequencer.py) fed by the connections
and by REST backfills (streams/binance/backfill.py), and each input returns what it changed, which the
client acts on: trades ready go to the ready queue (streams/binance/ready.py), a gap starts its stream's
backfill, ids that went back and gaps given up are logged. Streams can be added and removed while it runs.
Every task it starts is supervised: an unexpected error ends the whole client, loudly.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping

from streams.binance.backfill import Backfill
from streams.binance.client_config import ClientConfig
from streams.binance.client_stats import ClientStats
from streams.binance.errors import ConnectionLost, ParseError
from streams.binance.protocol import Trade
from streams.binance.ready import ReadyQueue
from streams.binance.rest import BinanceRest
from streams.binance.sequencer import ONE_READY, Change, Role, Sequencer
from streams.binance.slot import ConnectionSlot
from streams.binance.stream import StreamState
from streams.binance.streamid import StreamId
from streams.binance.supervision import Supervisor, TaskFailed

logger = logging.getLogger(__name__)

__all__ = ["ClientConfig", "ClientStats", "StreamClient", "StreamState"]


class StreamClient:
    """`async with StreamClient(config) as client: async for trade in client: ...`

    Trades come out per stream in id order, each id once. `resume` gives, per stream, the last id already
    stored; the client then fetches what was missed since (at most `backfill_max_trades`). `add` and
    `remove` change the streams while it runs. `before_connect` is awaited before each connection attempt
    (a shared connection budget).
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        resume: Mapping[StreamId, int] | None = None,
        rest: BinanceRest | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        before_connect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self._slots: list[ConnectionSlot] = []
        self.stats = ClientStats(self._slots)
        self.streams: dict[StreamId, StreamState] = {}
        # The same streams by what a trade carries: the per-trade lookup builds no StreamId.
        self._routes: dict[tuple[str, str], StreamState] = {}
        self._rest = rest or BinanceRest(config.rest_url, micros=config.micros)
        self._owns_rest = rest is None
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._before_connect = before_connect
        self._ready = ReadyQueue(config.queue_size)
        self._stopping = asyncio.Event()
        self._done = False
        self._fatal: BaseException | None = None
        self._tasks = Supervisor(self._on_task_failure)
        self._backfill = Backfill(self._rest, policy=config.backfill_retry, rng=self._rng, apply=self._apply,
                                  wait_for_room=self.wait_for_room, stopping=self._stopping, sleep=sleep)
        self._started = False
        for key in config.streams:
            self._register(key, (resume or {}).get(key))

    # --- life ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> StreamClient:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start(self) -> None:
        self._started = True
        for stream in list(self.streams.values()):
            self._place(stream)
            if stream.sequencer.last_id is not None:
                self._check_resume(stream)

    async def stop(self, timeout: float | None = None) -> None:
        """Close the connections with a close frame and stop, within `timeout` seconds (the config's
        `stop_timeout` by default) whatever the exchange does; past it, connections are aborted and the
        background tasks cancelled. Trades already read stay available (`take_ready`)."""
        self._stopping.set()
        timeout = self.config.stop_timeout if timeout is None else timeout
        try:
            runs = {slot.task for slot in self._slots if slot.task is not None and not slot.task.done()}
            if runs:
                await asyncio.wait(runs, timeout=timeout)  # cancelled: abort at once, below
                if any(not task.done() for task in runs):
                    logger.warning("the stream client did not stop within %.1f s; aborting its connections",
                                   timeout)
        finally:
            for slot in self._slots:
                slot.abort(ConnectionLost("client stopped"))
            await self._tasks.aclose(timeout=1.0)
            if self._owns_rest:
                await self._rest.aclose()
            self._finish()

    def abort(self, reason: str) -> None:
        """Stop at once, without waiting for anything: drop the connections (no close handshake).

        For fencing (a task that cannot confirm its lease must stop streaming before the lease can
        expire, or another task could take the stream): synchronous, so it takes effect before the
        caller's next await."""
        if not self._stopping.is_set():
            logger.warning("stream client aborted: %s", reason)
        self._stopping.set()
        for slot in self._slots:
            slot.abort(ConnectionLost(reason))
        self._ready.wake()

    @property
    def rest(self) -> BinanceRest:
        return self._rest

    @property
    def failure(self) -> BaseException | None:
        """The error that ended the client, if one did (a background task's failure, or a fatal error)."""
        return self._fatal

    def _finish(self) -> None:
        if not self._done:
            self.stats.final_state = "stopped" if self._fatal is None else "failed"
            self._done = True
        self._tasks.cancel()
        self._ready.wake()

    def _on_task_failure(self, failure: TaskFailed) -> None:
        """A background task failed unexpectedly (already logged): the whole client ends, loudly."""
        self.stats.task_failures += 1
        self.stats.final_state = "failed"
        if self._fatal is None:
            self._fatal = failure
        self.abort(str(failure))

    # --- streams while running --------------------------------------------------------------------

    def add(self, key: StreamId, resume: int | None = None) -> StreamState:
        """Collect one more stream (SUBSCRIBE on a connection with room, or a new connection)."""
        if key in self.streams:
            return self.streams[key]
        stream = self._register(key, resume)
        if self._started:
            self._place(stream)
            if resume is not None:
                self._check_resume(stream)
        return stream

    def remove(self, key: StreamId) -> None:
        """Stop collecting a stream (UNSUBSCRIBE; its connection closes when it carried nothing else).
        Trades of it already taken stay with the consumer; those not taken yet are dropped."""
        stream = self.streams.pop(key, None)
        if stream is None:
            return
        del self._routes[key.route]
        if stream.backfill is not None:
            stream.backfill.cancel()
        self._ready.take_stream(stream.sequencer)
        if stream.slot is not None:
            stream.slot.remove({key})

    async def subscribe(self, key: StreamId, timeout: float = 10.0) -> None:
        """`add`, then wait (up to `timeout` s) until a connection carries the stream."""
        stream = self.add(key)
        if stream.slot is not None:
            await asyncio.wait_for(stream.slot.synced.wait(), timeout)

    async def unsubscribe(self, key: StreamId) -> None:
        self.remove(key)

    def _register(self, key: StreamId, resume: int | None) -> StreamState:
        sequencer = Sequencer(last_id=resume, hold_limit=self.config.queue_size,
                              backfill_max=self.config.backfill_max_trades)
        stream = StreamState(key, sequencer)
        self.streams[key] = self._routes[key.route] = stream
        return stream

    def _place(self, stream: StreamState) -> None:
        """On the first connection with room, else on a new one."""
        limit = max(1, min(self.config.streams_per_connection, 1024))
        slot = next((s for s in self._slots if len(s.keys) < limit), None)
        if slot is None:
            slot = ConnectionSlot(
                len(self._slots), self.config.connection_settings(), self,
                backoff=self.config.reconnect.backoff(self._rng),
                before_connect=self._before_connect, spawn=self._tasks.spawn, stopping=self._stopping,
                rotate_after=self.config.rotate_after, overlap_timeout=self.config.overlap_timeout,
                sleep=self._sleep, clock=self._clock)
            self._slots.append(slot)
            slot.task = self._tasks.spawn(slot.run(), f"connection {slot.index}")
        stream.slot = slot
        slot.add({stream.key})

    def _check_resume(self, stream: StreamState) -> None:
        """A resumed stream: check its resume point with the exchange (streams.binance.backfill)."""
        def current() -> bool:  # asked once the exchange has answered
            return self.streams.get(stream.key) is stream

        self._tasks.spawn(self._backfill.check_resume(stream, current), f"resume check {stream.key}")

    # --- the consumer's side ------------------------------------------------------------------------

    def __aiter__(self) -> StreamClient:
        return self

    async def __anext__(self) -> Trade:
        batch = await self.next_batch(1)
        if not batch:
            raise StopAsyncIteration
        return batch[0]

    async def next_batch(self, limit: int) -> list[Trade]:
        """Wait for at least one trade, return up to `limit`; [] once stopped and drained.

        Raises the error that ended the client (a fatal one, or TaskFailed for a background task that
        failed) as soon as it happens; trades read before it stay available through `take_ready`."""
        while not self._ready.count or self._fatal is not None:
            if self._fatal is not None:
                raise self._fatal
            if self._done:
                return []
            await self._ready.wait_for_trades()
        return self._ready.take(limit)

    def take_ready(self, limit: int) -> list[Trade]:
        """Up to `limit` trades that are ready now, without waiting (for batching consumers)."""
        return self._ready.take(limit)

    def take_stream(self, key: StreamId) -> list[Trade]:
        """The ready trades of one stream (before it is removed: what was read is handed on)."""
        stream = self.streams.get(key)
        return [] if stream is None else self._ready.take_stream(stream.sequencer)

    @property
    def backlogged(self) -> bool:
        return self._ready.backlogged

    async def wait_for_room(self) -> None:
        await self._ready.wait_for_room(self._stopping)

    # --- what the status shows ----------------------------------------------------------------------

    def state_of(self, key: StreamId) -> str:
        stream = self.streams.get(key)
        if self._done or self._fatal is not None:
            return self.stats.state
        if stream is None or stream.slot is None:
            return "starting"
        return stream.slot.state

    def connected_at_of(self, key: StreamId) -> float | None:
        stream = self.streams.get(key)
        return None if stream is None or stream.slot is None else stream.slot.connected_at

    def reconnects_of(self, key: StreamId) -> int:
        stream = self.streams.get(key)
        return 0 if stream is None or stream.slot is None else stream.slot.reconnects

    def stuck_for(self, key: StreamId) -> float:
        """Seconds that live trades of `key` have been held without any trade being handed on since."""
        stream = self.streams.get(key)
        return 0.0 if stream is None else stream.stuck_for(self._clock())

    # --- the connections' side (SlotSink) -----------------------------------------------------------

    def on_trade(self, slot: ConnectionSlot, role: Role, trade: Trade) -> None:
        """On every trade: kept to a lookup, a few stores and a comparison when nothing unusual happens."""
        stream = self._routes.get((trade.symbol, trade.channel))  # its StreamId's `route`
        if stream is None:
            return  # unsubscribed while frames were in flight
        now = self._clock()
        stream.last_event_ts, stream.last_received_us, stream.last_trade_at = trade.event_ts, trade.received_us, now
        change = stream.sequencer.live(trade, role)
        if change is ONE_READY:  # one more trade to hand on, nothing held, nothing to fetch or to say
            stream.last_progress, stream.held_since = now, None
            self._ready.added(stream.sequencer, 1)
        else:
            self._apply(stream, change, now)

    def on_parse_error(self, slot: ConnectionSlot, error: ParseError) -> None:
        self.stats.parse_errors += 1
        frame = error.frame if isinstance(error.frame, str) else repr(error.frame)
        self.stats.dead_letters.append((time.time(), error.reason, frame or ""))
        if self.stats.parse_errors <= 10 or self.stats.parse_errors % 1000 == 0:
            logger.warning("slot %d: skipped a bad frame (%d so far): %s; frame: %.200s", slot.index,
                           self.stats.parse_errors, error.reason, frame)

    def on_switch(self, slot: ConnectionSlot) -> None:
        for stream in self._streams_of(slot):
            self._apply(stream, stream.sequencer.promote())

    def on_successor_lost(self, slot: ConnectionSlot) -> None:
        for stream in self._streams_of(slot):
            self._apply(stream, stream.sequencer.discard_successor())

    def successors_caught_up(self, slot: ConnectionSlot) -> bool:
        """True once every stream the successor has data for is handed on up to that data."""
        verdicts = [stream.sequencer.successor_caught_up() for stream in self._streams_of(slot)]
        seen = [v for v in verdicts if v is not None]
        return bool(seen) and all(seen)

    def _streams_of(self, slot: ConnectionSlot) -> list[StreamState]:
        return [self.streams[key] for key in list(slot.keys) if key in self.streams]

    def _apply(self, stream: StreamState, change: Change, now: float | None = None) -> None:
        """Act on what the sequencer says changed: hand on what is ready, fetch what is missing, say what
        went back and what was lost."""
        now = self._clock() if now is None else now
        if change.ready:
            self._ready.added(stream.sequencer, change.ready)
            stream.last_progress = now
        stream.held_since = (stream.held_since or now) if change.holding else None
        for trade_id, last in change.went_back:
            logger.warning("%s: trade id went back: %d arrived after %d (a replayed stream or an exchange reset); "
                           "not stored again, kept for the audit (%d so far)", stream.key, trade_id, last,
                           stream.ids_back)
        for gap, why in change.losses:
            logger.error("%s: %d trades (%d..%d) not recovered: %s", stream.key, gap.size, gap.first, gap.last, why)
        if change.wanted is not None and stream.backfill is None and self.streams.get(stream.key) is stream:
            stream.backfill = self._tasks.spawn(self._backfill.run(stream), f"backfill {stream.key}")
