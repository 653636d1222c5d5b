"""The stream client: every trade id of many streams once and in order, over few shared connections.

Streams are spread over combined connections of up to `streams_per_connection` each (streams/binance/
slot.py: reconnects with backoff, live SUBSCRIBE/UNSUBSCRIBE, make-before-break rotation per connection);
each stream's continuity is a Sans-I/O `Sequencer` (streams/binance/sequencer.py) fed by the connections
and by REST backfills, one backfill task per stream with a gap (a dropped connection with 200 streams
heals 200 gaps), all within the REST weight budget. Streams can be added and removed while it runs.
Every task it starts is supervised: an unexpected error ends the whole client, loudly.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streams.binance.backoff import RETRY, Policy
from streams.binance.connection import ConnectionSettings
from streams.binance.errors import ConnectionLost, ParseError, StreamError
from streams.binance.protocol import Trade
from streams.binance.rest import BinanceRest
from streams.binance.sequence import Gap
from streams.binance.sequencer import Role, Sequencer
from streams.binance.slot import ConnectionSlot
from streams.binance.streamid import StreamId, stream_id
from streams.binance.supervision import Supervisor, TaskFailed

logger = logging.getLogger(__name__)

_MICROSECONDS = 10**14  # exchange timestamps at or above this are microseconds


@dataclass(frozen=True)
class ClientConfig:
    """Everything the client needs; the Django settings (or the command line) fill it in."""

    ws_url: str
    rest_url: str
    streams: tuple[StreamId, ...]
    reconnect: Policy = RETRY["reconnect"]
    silence_timeout: float = 10.0
    probe_timeout: float = 5.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    open_timeout: float = 10.0
    rotate_after: float = 23.5 * 3600  # the exchange cuts every connection at 24 h
    overlap_timeout: float = 5.0       # longest time two connections run side by side
    backfill_max_trades: int = 100_000
    backfill_retry: Policy = RETRY["backfill"]  # REST not yet showing the trades (it lags the stream slightly)
    queue_size: int = 10_000
    stop_timeout: float = 3.0          # longest a clean stop may take before connections are aborted
    streams_per_connection: int = 200  # at most 1024 (the exchange's limit)
    micros: bool = False               # timeUnit=MICROSECOND on streams, X-MBX-TIME-UNIT on REST

    @classmethod
    def for_streams(cls, ws_url: str, rest_url: str, streams: Iterable[StreamId | tuple[str, str]],
                    **tunables: Any) -> ClientConfig:
        """A config for `streams`: stream ids, or (symbol, channel) as a person gives them (any case)."""
        ids = tuple(s if isinstance(s, StreamId) else stream_id(*s) for s in streams)
        return cls(ws_url=ws_url, rest_url=rest_url, streams=ids, **tunables)

    def connection_settings(self) -> ConnectionSettings:
        return ConnectionSettings(
            ws_url=self.ws_url, open_timeout=self.open_timeout, ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout, silence_timeout=self.silence_timeout,
            probe_timeout=self.probe_timeout, micros=self.micros,
        )


@dataclass
class StreamState:
    """One (symbol, channel) stream: its sequencer, where it lives, and what was seen of it."""

    key: StreamId
    sequencer: Sequencer
    slot: ConnectionSlot | None = None
    last_event_ts: int = 0
    last_received_us: int | None = None  # local receive time of the last live trade (µs since the epoch)
    last_trade_at: float | None = None   # monotonic: the last live trade arrived
    held_since: float | None = None      # monotonic: trades have been held behind a gap since
    last_progress: float | None = None   # monotonic: a trade was handed on
    resume_rejected: bool = False
    backfill: asyncio.Task[None] | None = None
    counted_ready: int = 0               # its trades in the client's ready count

    @property
    def lag_ms(self) -> int | None:
        """Receive time minus exchange event time of the last live trade, never below 0.

        The two times come from two clocks (the exchange's and this host's) that NTP keeps within a few
        milliseconds of each other at best, so a difference of a millisecond or two either way is clock
        skew, not lag: a trade cannot arrive before it happened. A negative difference is shown as 0."""
        if self.last_received_us is None or not self.last_event_ts:
            return None
        event_us = self.last_event_ts if self.last_event_ts >= _MICROSECONDS else self.last_event_ts * 1000
        return max(0, (self.last_received_us - event_us) // 1000)

    # The continuity counters, as the status reads them.
    @property
    def last_id(self) -> int | None:
        return self.sequencer.last_id

    @property
    def trades(self) -> int:
        return self.sequencer.counters.trades

    @property
    def backfilled(self) -> int:
        return self.sequencer.counters.backfilled

    @property
    def duplicates(self) -> int:
        return self.sequencer.counters.duplicates

    @property
    def ids_back(self) -> int:
        return self.sequencer.counters.ids_back

    @property
    def gaps_found(self) -> int:
        return self.sequencer.counters.gaps_found

    @property
    def gaps_healed(self) -> int:
        return self.sequencer.counters.gaps_healed

    @property
    def missed(self) -> int:
        return self.sequencer.counters.missed

    @property
    def unhealed(self) -> deque[Gap]:
        return self.sequencer.unhealed

    @property
    def regressions(self) -> deque[Trade]:
        return self.sequencer.regressions

    @property
    def backfilling(self) -> bool:
        return self.sequencer.wanted is not None


class ClientStats:
    """Over every connection of the client (the connection counts are read from them when asked)."""

    def __init__(self, slots: list[ConnectionSlot]) -> None:
        self._slots = slots
        self.final_state: str | None = None   # "stopped" or "failed" once the client has ended
        self.parse_errors = 0
        self.dead_letters: deque[tuple[float, str, str]] = deque(maxlen=50)
        self.task_failures = 0  # background tasks that ended with an unexpected error (each ends the client)

    @property
    def state(self) -> str:
        if self.final_state is not None:
            return self.final_state
        states = {slot.state for slot in self._slots}
        if not states:
            return "starting"
        return states.pop() if len(states) == 1 else ("connected" if states <= {"connected", "rotating", "idle"}
                                                     else sorted(states - {"connected", "idle"})[0])

    @property
    def connection_attempts(self) -> int:
        return sum(slot.connection_attempts for slot in self._slots)

    @property
    def reconnects(self) -> int:
        return sum(slot.reconnects for slot in self._slots)

    @property
    def rotations(self) -> int:
        return sum(slot.rotations for slot in self._slots)

    @property
    def connected_since(self) -> float | None:
        """Wall-clock time the connection in use opened (a client of one connection)."""
        primary = self._slots[0].primary if len(self._slots) == 1 else None
        return primary.opened_wall if primary is not None and self._slots[0].state == "connected" else None


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
        self._ready_streams: dict[StreamId, StreamState] = {}   # streams with trades to hand on (ordered)
        self._ready_count = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = asyncio.Event()
        self._done = False
        self._fatal: BaseException | None = None
        self._tasks = Supervisor(self._on_task_failure)
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
        expire, DESIGN.md promise 3): synchronous, so it takes effect before the caller's next await."""
        if not self._stopping.is_set():
            logger.warning("stream client aborted: %s", reason)
        self._stopping.set()
        for slot in self._slots:
            slot.abort(ConnectionLost(reason))
        self._ready.set()
        self._room.set()

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
        self._ready.set()
        self._room.set()

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
        self._ready_count -= stream.counted_ready
        stream.sequencer.take()
        self._ready_streams.pop(key, None)
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
        while not self._ready_count or self._fatal is not None:
            if self._fatal is not None:
                raise self._fatal
            if self._done:
                return []
            self._ready.clear()
            await self._ready.wait()
        return self.take_ready(limit)

    def take_ready(self, limit: int) -> list[Trade]:
        """Up to `limit` trades that are ready now, without waiting (for batching consumers)."""
        batch: list[Trade] = []
        while self._ready_streams and len(batch) < limit:
            key, stream = next(iter(self._ready_streams.items()))
            batch += stream.sequencer.take(limit - len(batch))
            stream.counted_ready = stream.sequencer.ready
            if not stream.counted_ready:
                del self._ready_streams[key]
        self._ready_count -= len(batch)
        if self._ready_count < self.config.queue_size:
            self._room.set()
        return batch

    def take_stream(self, key: StreamId) -> list[Trade]:
        """The ready trades of one stream (before it is removed: what was read is handed on)."""
        stream = self.streams.get(key)
        if stream is None:
            return []
        taken = stream.sequencer.take()
        self._ready_count -= stream.counted_ready
        stream.counted_ready = 0
        self._ready_streams.pop(key, None)
        if self._ready_count < self.config.queue_size:
            self._room.set()
        return taken

    @property
    def backlogged(self) -> bool:
        return self._ready_count >= self.config.queue_size

    async def wait_for_room(self) -> None:
        while self.backlogged and not self._stopping.is_set():
            self._room.clear()
            await self._room.wait()

    # --- what the status shows ----------------------------------------------------------------------

    @property
    def messages(self) -> int:
        """Frames read so far, by every connection."""
        return sum(slot.frames for slot in self._slots)

    @property
    def probes(self) -> int:
        return sum(slot.probes for slot in self._slots)

    @property
    def connections(self) -> int:
        return sum(1 for slot in self._slots if slot.state in ("connected", "rotating"))

    @property
    def connected_at(self) -> float | None:
        """When the connection in use opened (the client's clock), for a client of one connection."""
        return self._slots[0].connected_at if len(self._slots) == 1 else None

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

    def lag_ms(self, key: StreamId) -> int | None:
        stream = self.streams.get(key)
        return None if stream is None else stream.lag_ms

    def stuck_for(self, key: StreamId) -> float:
        """Seconds that live trades of `key` have been held without any trade being handed on since
        (0 when nothing is held): a backfill that makes no progress must not look healthy."""
        stream = self.streams.get(key)
        if stream is None or not stream.sequencer.holding or stream.held_since is None:
            return 0.0
        since = max(stream.held_since, stream.last_progress or stream.held_since)
        return max(0.0, self._clock() - since)

    # --- the connections' side (SlotSink) -----------------------------------------------------------

    def on_trade(self, slot: ConnectionSlot, role: Role, trade: Trade) -> None:
        stream = self._routes.get((trade.symbol, trade.channel))  # its StreamId's `route`
        if stream is None:
            return  # unsubscribed while frames were in flight
        now = self._clock()
        stream.last_event_ts, stream.last_received_us, stream.last_trade_at = trade.event_ts, trade.received_us, now
        stream.sequencer.live(trade, role)
        self._after(stream, now)

    def on_parse_error(self, slot: ConnectionSlot, error: ParseError) -> None:
        self.stats.parse_errors += 1
        frame = error.frame if isinstance(error.frame, str) else repr(error.frame)
        self.stats.dead_letters.append((time.time(), error.reason, frame or ""))
        if self.stats.parse_errors <= 10 or self.stats.parse_errors % 1000 == 0:
            logger.warning("slot %d: skipped a bad frame (%d so far): %s; frame: %.200s", slot.index,
                           self.stats.parse_errors, error.reason, frame)

    def on_switch(self, slot: ConnectionSlot) -> None:
        for key in list(slot.keys):
            stream = self.streams.get(key)
            if stream is not None:
                stream.sequencer.promote()
                self._after(stream)

    def on_successor_lost(self, slot: ConnectionSlot) -> None:
        for key in list(slot.keys):
            stream = self.streams.get(key)
            if stream is not None:
                stream.sequencer.discard_successor()

    def successors_caught_up(self, slot: ConnectionSlot) -> bool:
        """True once every stream the successor has data for is handed on up to that data."""
        verdicts = [self.streams[key].sequencer.successor_caught_up() for key in slot.keys if key in self.streams]
        seen = [v for v in verdicts if v is not None]
        return bool(seen) and all(seen)

    def _after(self, stream: StreamState, now: float | None = None) -> None:
        """After the sequencer took something in: hand on what is ready, fetch what is missing, say what
        was lost. On every trade: kept to a few attribute reads when nothing unusual happened."""
        sequencer = stream.sequencer
        ready = sequencer.ready
        now = self._clock() if now is None else now
        if ready != stream.counted_ready:
            self._ready_count += ready - stream.counted_ready
            stream.counted_ready = ready
            self._ready_streams.setdefault(stream.key, stream)
            stream.last_progress = now
            self._ready.set()
        if sequencer.holding:
            stream.held_since = stream.held_since or now
        else:
            stream.held_since = None
        if not sequencer.has_news:
            if sequencer.wanted is not None and stream.backfill is None:
                stream.backfill = self._tasks.spawn(self._backfill(stream), f"backfill {stream.key}")
            return
        for trade_id, last in sequencer.went_back():
            logger.warning("%s: trade id went back: %d arrived after %d (a replayed stream or an exchange reset); "
                           "not stored again, kept for the audit (%d so far)", stream.key, trade_id,
                           last, sequencer.counters.ids_back)
        for gap, why in sequencer.losses():
            logger.error("%s: %d trades (%d..%d) not recovered: %s", stream.key, gap.size, gap.first,
                         gap.last, why)
        if sequencer.wanted is not None and stream.backfill is None:
            stream.backfill = self._tasks.spawn(self._backfill(stream), f"backfill {stream.key}")

    # --- backfill ---------------------------------------------------------------------------------------

    async def _backfill(self, stream: StreamState) -> None:
        """Fetch what the stream's sequencer wants, page by page, until it wants nothing more."""
        key = stream.key
        name = str(key)
        retries = self.config.backfill_retry.backoff(self._rng)
        try:
            while (gap := stream.sequencer.wanted) is not None and not self._stopping.is_set():
                logger.info("%s: gap of %d trades (%d..%d); backfilling from REST", name, gap.size, gap.first,
                            gap.last)
                before = stream.sequencer.last_id
                try:
                    async for page in self._rest.pages(key.symbol, key.channel, gap):
                        stream.sequencer.page(page)
                        self._after(stream)
                        await self.wait_for_room()
                except StreamError as exc:
                    logger.error("%s: backfill failed: %s", name, exc)
                    stream.sequencer.give_up(f"the REST API failed: {exc}")
                    self._after(stream)
                    continue
                if stream.sequencer.last_id != before:
                    retries.reset()
                    continue
                if retries.exhausted:
                    stream.sequencer.give_up("not on the REST API")
                    self._after(stream)
                    retries.reset()
                    continue
                await self._sleep(retries.next_delay())  # the REST API lags the stream by a moment
        finally:
            stream.backfill = None

    def _check_resume(self, stream: StreamState) -> None:
        """A resumed stream: refuse a resume point ahead of the exchange (stored data from another
        exchange), and catch a quiet stream up to the newest trade without waiting for a live one."""
        self._tasks.spawn(self._resume_check(stream), f"resume check {stream.key}")

    async def _resume_check(self, stream: StreamState) -> None:
        key = stream.key
        try:
            latest = await self._rest.latest_trade_id(key.symbol, key.channel)
        except StreamError as exc:
            logger.warning("%s: cannot ask the exchange for its newest trade (%s); the next live trade shows "
                           "what is missing", key, exc)
            return
        resumed = stream.sequencer.last_id
        if latest is None or resumed is None or self.streams.get(stream.key) is not stream:
            return
        if latest < resumed and stream.trades == 0:
            # Ids never go back on one exchange: the stored data came from another one (testnet against
            # mainnet, a fake exchange). Every live trade would look like one going back; start from the
            # live stream instead, and say so loudly.
            logger.error("%s: resume point %d is ahead of the exchange's newest trade %d; the stored trades "
                         "come from another exchange. Starting from the live stream.", key, resumed, latest)
            stream.sequencer.reset("resume point ahead of the exchange")
            stream.resume_rejected = True
        else:
            stream.sequencer.catch_up(latest)
        self._after(stream)
