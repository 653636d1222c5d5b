"""The stream client: every trade id once and in order, across reconnects, rotations and restarts.

It keeps one connection to a combined stream up (reconnecting with backoff), replaces it before the
exchange's 24 h cut-off or on a `serverShutdown` notice by opening the next one first (make before
break), and heals every jump in the consecutive trade ids from the REST API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.binance.backoff import Backoff
from streams.binance.connection import Connection, ConnectionSettings
from streams.binance.errors import ConnectionLost, ParseError, StreamError
from streams.binance.protocol import ServerShutdown, Trade, normalize_channel, normalize_symbol, stream_name
from streams.binance.rest import BinanceRest
from streams.binance.sequence import Gap, Verdict, bounded_gap, classify, missing_between
from streams.binance.supervision import Supervisor, TaskFailed
from streams.binance.waiting import STOPPED, unless_stopped

logger = logging.getLogger(__name__)

StreamKey = tuple[str, str]  # (SYMBOL, channel)
_UNHEALED_KEPT = 100
_MICROSECONDS = 10**14  # exchange timestamps at or above this are microseconds
_REGRESSIONS_KEPT = 100  # trades whose id went back, kept for the audit to compare with what is stored


@dataclass(frozen=True)
class ClientConfig:
    """Everything the client needs; the Django settings (or the command line) fill it in."""

    ws_url: str
    rest_url: str
    streams: tuple[StreamKey, ...]
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    backoff_reset_after: float = 60.0
    silence_timeout: float = 10.0
    probe_timeout: float = 5.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    open_timeout: float = 10.0
    rotate_after: float = 23.5 * 3600  # the exchange cuts every connection at 24 h
    overlap_timeout: float = 5.0       # longest time two connections run side by side
    backfill_max_trades: int = 100_000
    backfill_retries: int = 5          # REST not yet showing the trades (it lags the stream slightly)
    queue_size: int = 10_000
    stop_timeout: float = 3.0          # longest a clean stop may take before connections are aborted

    @classmethod
    def for_streams(cls, ws_url: str, rest_url: str, streams: Iterable[tuple[str, str]], **tunables: Any
                    ) -> ClientConfig:
        keys = tuple((normalize_symbol(s), normalize_channel(c)) for s, c in streams)
        return cls(ws_url=ws_url, rest_url=rest_url, streams=keys, **tunables)

    def connection_settings(self) -> ConnectionSettings:
        return ConnectionSettings(
            ws_url=self.ws_url, open_timeout=self.open_timeout, ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout, silence_timeout=self.silence_timeout,
            probe_timeout=self.probe_timeout,
        )


@dataclass
class StreamState:
    """Continuity and counters of one (symbol, channel) stream."""

    key: StreamKey
    last_id: int | None = None
    hold: deque[Trade] = field(default_factory=deque)
    backfilling: bool = False
    trades: int = 0
    backfilled: int = 0
    duplicates: int = 0
    gaps_found: int = 0
    gaps_healed: int = 0
    missed: int = 0
    unhealed: deque[Gap] = field(default_factory=lambda: deque(maxlen=_UNHEALED_KEPT))
    last_event_ts: int = 0
    resume_rejected: bool = False
    # Live trades whose id is not above the last one handed on, outside the overlaps the client makes
    # itself (rotation, backfill): a replayed stream or an exchange reset (issue 8, 2). Counted, the
    # first of each run logged, and kept for the audit to compare with what is stored.
    ids_back: int = 0
    regressions: deque[Trade] = field(default_factory=lambda: deque(maxlen=_REGRESSIONS_KEPT))
    last_trade_at: float | None = None   # monotonic: the last live trade of this stream arrived
    lag_ms: int | None = None            # wall time when the last live trade arrived, minus its event time
    last_progress: float | None = None   # monotonic: the last trade was handed on
    held_since: float | None = None      # monotonic: live trades have been held since (backfilling)


@dataclass
class ClientStats:
    state: str = "idle"
    connected_since: float | None = None  # wall-clock seconds
    connection_attempts: int = 0
    reconnects: int = 0
    rotations: int = 0
    parse_errors: int = 0
    frames_closed: int = 0  # frames read by connections that have ended
    probes: int = 0         # silence probes sent (LIST_SUBSCRIPTIONS), by connections that have ended
    dead_letters: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=50))
    task_failures: int = 0  # background tasks that ended with an unexpected error (each ends the client)


class StreamClient:
    """`async with StreamClient(config) as client: async for trade in client: ...`

    Trades come out per stream in id order, each id once. `resume` gives, per stream, the last id
    already stored; the client then fetches what was missed since (at most `backfill_max_trades`).
    `before_connect` is awaited before each connection attempt (a shared connection budget).
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        resume: Mapping[StreamKey, int] | None = None,
        rest: BinanceRest | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        before_connect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.streams = {key: StreamState(key) for key in config.streams}
        self.stats = ClientStats()
        self._resume = dict(resume or {})
        self._rest = rest or BinanceRest(config.rest_url)
        self._owns_rest = rest is None
        self._sleep = sleep
        self._clock = clock
        self._backoff = Backoff(config.backoff_base, config.backoff_cap, config.backoff_reset_after,
                                rng or random.Random())
        self._before_connect = before_connect
        self._out: deque[Trade] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._primary: Connection | None = None
        self._successor: Connection | None = None
        self._successor_held: list[Trade] = []
        self._successor_first: dict[StreamKey, int] = {}
        self._switched = asyncio.Event()
        self._rotate_now = asyncio.Event()
        self._stopping = asyncio.Event()
        self._done = False
        self._served = False
        self._fatal: BaseException | None = None
        self._tasks = Supervisor(self._on_task_failure)
        self._runner: asyncio.Task[None] | None = None

    # --- the consumer's side ----------------------------------------------------------------------

    async def __aenter__(self) -> StreamClient:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start(self) -> None:
        self._runner = self._tasks.spawn(self._run(), name="stream client")

    async def stop(self, timeout: float | None = None) -> None:
        """Close the connections with a close frame and stop, within `timeout` seconds (the config's
        `stop_timeout` by default) whatever the exchange does; past it, connections are aborted and the
        background tasks cancelled. Trades already read stay available (`take_ready`)."""
        self._stopping.set()
        timeout = self.config.stop_timeout if timeout is None else timeout
        try:
            if self._runner is not None and not self._runner.done():
                await asyncio.wait({self._runner}, timeout=timeout)  # cancelled: abort at once, below
                if not self._runner.done():
                    logger.warning("the stream client did not stop within %.1f s; aborting its connections",
                                   timeout)
        finally:
            self._abort_connections(ConnectionLost("client stopped"))
            await self._tasks.aclose(timeout=1.0)
            self._finish()

    def abort(self, reason: str) -> None:
        """Stop at once, without waiting for anything: drop the connections (no close handshake).

        For fencing (a task that cannot confirm its lease must stop streaming before the lease can
        expire, DESIGN.md promise 3): synchronous, so it takes effect before the caller's next await."""
        if not self._stopping.is_set():
            logger.warning("stream client aborted: %s", reason)
        self._stopping.set()
        self._abort_connections(ConnectionLost(reason))
        self._ready.set()
        self._room.set()

    @property
    def connected_at(self) -> float | None:
        """When the connection in use opened (the client's clock), or None while not connected."""
        primary = self._primary
        return primary.opened_at if primary is not None and self.stats.state == "connected" else None

    def lag_ms(self, key: StreamKey) -> int | None:
        stream = self.streams.get(key)
        return None if stream is None else stream.lag_ms

    @property
    def failure(self) -> BaseException | None:
        """The error that ended the client, if one did (a background task's failure, or a fatal error)."""
        return self._fatal

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
        while not self._out or self._fatal is not None:
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
        while self._out and len(batch) < limit:
            batch.append(self._take())
        return batch

    def _take(self) -> Trade:
        trade = self._out.popleft()
        if len(self._out) < self.config.queue_size:
            self._room.set()
        return trade

    @property
    def backlogged(self) -> bool:
        return len(self._out) >= self.config.queue_size

    async def wait_for_room(self) -> None:
        while self.backlogged and not self._stopping.is_set():
            self._room.clear()
            await self._room.wait()

    @property
    def messages(self) -> int:
        """Frames read so far, by every connection."""
        return self.stats.frames_closed + sum(c.frames for c in self._live_connections())

    @property
    def probes(self) -> int:
        """Silence probes sent so far, by every connection."""
        return self.stats.probes + sum(c.probes for c in self._live_connections())

    def _live_connections(self) -> list[Connection]:
        return [c for c in (self._primary, self._successor) if c is not None]

    # --- subscriptions while running --------------------------------------------------------------

    async def subscribe(self, symbol: str, channel: str) -> None:
        key = (normalize_symbol(symbol), normalize_channel(channel))
        self.streams.setdefault(key, StreamState(key))
        if self._primary is not None:
            await self._primary.subscribe([stream_name(*key)])

    async def unsubscribe(self, symbol: str, channel: str) -> None:
        key = (normalize_symbol(symbol), normalize_channel(channel))
        self.streams.pop(key, None)
        if self._primary is not None:
            await self._primary.unsubscribe([stream_name(*key)])

    # --- the connection's side (EventSink) --------------------------------------------------------

    def on_trade(self, connection: Connection, trade: Trade) -> None:
        if connection is self._primary:
            self._accept(trade, live=True)
        elif connection is self._successor:
            self._successor_held.append(trade)
            self._successor_first.setdefault((trade.symbol, trade.channel), trade.trade_id)
            if self._successor_caught_up():
                self._switch_to(connection)

    def on_shutdown_notice(self, connection: Connection, notice: ServerShutdown) -> None:
        logger.info("%s: serverShutdown notice (E=%d); rotating now", connection.url, notice.event_ts)
        if connection is self._primary:
            self._rotate_now.set()

    def on_parse_error(self, connection: Connection, error: ParseError) -> None:
        self.stats.parse_errors += 1
        frame = error.frame if isinstance(error.frame, str) else repr(error.frame)
        self.stats.dead_letters.append((time.time(), error.reason, frame or ""))
        if self.stats.parse_errors <= 10 or self.stats.parse_errors % 1000 == 0:
            logger.warning("%s: skipped a bad frame (%d so far): %s; frame: %.200s",
                           connection.url, self.stats.parse_errors, error.reason, frame)

    # --- sequencing: synchronous, so nothing interleaves between a check and its effect -------------

    def _accept(self, trade: Trade, live: bool = False) -> None:
        """`live`: straight from the primary connection, so not part of an overlap the client made."""
        stream = self.streams.get((trade.symbol, trade.channel))
        if stream is None:
            return  # unsubscribed while frames were in flight
        stream.last_event_ts = trade.event_ts
        stream.last_trade_at = self._clock()
        event_ms = trade.event_ts // 1000 if trade.event_ts >= _MICROSECONDS else trade.event_ts
        stream.lag_ms = int(time.time() * 1000) - event_ms
        if stream.backfilling:
            if len(stream.hold) < self.config.queue_size:
                stream.hold.append(trade)
            # else: dropped from memory; the next trade shows the gap and REST brings it back.
            return
        verdict = classify(stream.last_id, trade.trade_id)
        if verdict is Verdict.NEXT or verdict is Verdict.FIRST:
            self._emit(stream, trade)
        elif verdict is Verdict.DUPLICATE:
            if live:
                self._went_back(stream, trade)
            else:
                stream.duplicates += 1
        else:
            assert stream.last_id is not None
            stream.hold.append(trade)
            self._start_backfill(stream, missing_between(stream.last_id, trade.trade_id))

    def _went_back(self, stream: StreamState, trade: Trade) -> None:
        """A live id at or below the last one handed on: a replay or an exchange reset (issue 8, 2)."""
        first_of_run = not stream.regressions or stream.regressions[-1].trade_id + 1 != trade.trade_id
        stream.ids_back += 1
        stream.regressions.append(trade)
        if first_of_run:
            logger.warning("%s@%s: trade id went back: %d arrived after %d (a replayed stream or an exchange "
                           "reset); not stored again, kept for the audit (%d so far)", stream.key[0],
                           stream.key[1], trade.trade_id, stream.last_id, stream.ids_back)

    def _emit(self, stream: StreamState, trade: Trade) -> None:
        stream.last_id = trade.trade_id
        stream.trades += 1
        stream.last_progress = self._clock()
        self._out.append(trade)
        self._ready.set()

    def _start_backfill(self, stream: StreamState, gap: Gap | None) -> None:
        stream.backfilling = True
        stream.held_since = self._clock()
        if gap is not None:
            stream.gaps_found += 1
            logger.info("%s@%s: gap of %d trades (%d..%d); backfilling from REST",
                        stream.key[0], stream.key[1], gap.size, gap.first, gap.last)
        self._tasks.spawn(self._backfill(stream, gap), name=f"backfill {stream_name(*stream.key)}")

    def stuck_for(self, key: StreamKey) -> float:
        """Seconds that live trades of `key` have been held without any trade being handed on since
        (0 when nothing is held): a backfill that makes no progress must not look healthy."""
        stream = self.streams.get(key)
        if stream is None or not stream.backfilling or stream.held_since is None:
            return 0.0
        since = max(stream.held_since, stream.last_progress or stream.held_since)
        return max(0.0, self._clock() - since)

    # --- backfill ---------------------------------------------------------------------------------

    async def _backfill(self, stream: StreamState, gap: Gap | None) -> None:
        """Fetch `gap` (None: catch up from last_id to the newest trade), then release held trades."""
        symbol, channel = stream.key
        try:
            while True:
                if gap is None and stream.last_id is not None:
                    latest = await self._rest.latest_trade_id(symbol, channel)
                    if latest is not None and latest > stream.last_id:
                        gap = missing_between(stream.last_id, latest + 1)
                        stream.gaps_found += 1
                    elif latest is not None and latest < stream.last_id:
                        # Ids never go back on one exchange: the stored data came from another one
                        # (testnet against mainnet, a fake exchange). Every live trade would look like
                        # a duplicate; start from the live stream instead, and say so loudly.
                        logger.error("%s@%s: resume point %d is ahead of the exchange's newest trade %d; "
                                     "the stored trades come from another exchange. Starting from the "
                                     "live stream.", symbol, channel, stream.last_id, latest)
                        stream.last_id = None
                        stream.resume_rejected = True
                if gap is not None:
                    await self._fetch(stream, gap)
                gap = self._release_held(stream)
                if gap is None:
                    stream.backfilling = False  # no await since the hold was found empty
                    stream.held_since = None
                    return
                stream.gaps_found += 1
                await self.wait_for_room()
        except StreamError as exc:
            logger.error("%s@%s: backfill failed: %s", symbol, channel, exc)
            self._give_up_held(stream)

    async def _fetch(self, stream: StreamState, gap: Gap) -> None:
        symbol, channel = stream.key
        beyond, wanted = bounded_gap(gap, self.config.backfill_max_trades)
        if beyond is not None:
            self._record_missed(stream, beyond, "beyond the backfill window")
        if wanted is None:
            return
        retries = Backoff(0.2, 5.0, attempts=self.config.backfill_retries)
        while stream.last_id is None or stream.last_id < wanted.last:
            start = wanted.first if stream.last_id is None else stream.last_id + 1
            progressed = False
            async for page in self._rest.pages(symbol, channel, Gap(start, wanted.last)):
                for trade in page:
                    if stream.last_id is not None and trade.trade_id > stream.last_id + 1:
                        self._record_missed(stream, missing_between(stream.last_id, trade.trade_id),
                                            "absent from the REST API too")
                    if stream.last_id is None or trade.trade_id > stream.last_id:
                        stream.backfilled += 1
                        self._emit(stream, trade)
                        progressed = True
                await self.wait_for_room()
            if stream.last_id is not None and stream.last_id >= wanted.last:
                break
            if progressed:
                retries.reset()
            if retries.exhausted:
                assert stream.last_id is not None
                self._record_missed(stream, Gap(stream.last_id + 1, wanted.last), "not on the REST API")
                return
            await self._sleep(retries.next_delay())  # the REST API lags the stream by a moment
        stream.gaps_healed += 1

    def _release_held(self, stream: StreamState) -> Gap | None:
        """Hand on held live trades in order; the gap before the first one that does not follow."""
        while stream.hold:
            trade = stream.hold[0]
            verdict = classify(stream.last_id, trade.trade_id)
            if verdict is Verdict.GAP:
                assert stream.last_id is not None
                return missing_between(stream.last_id, trade.trade_id)
            stream.hold.popleft()
            if verdict is Verdict.DUPLICATE:
                stream.duplicates += 1
            else:
                self._emit(stream, trade)
        return None

    def _give_up_held(self, stream: StreamState) -> None:
        if stream.hold and stream.last_id is not None and stream.hold[0].trade_id > stream.last_id + 1:
            self._record_missed(stream, missing_between(stream.last_id, stream.hold[0].trade_id),
                                "the REST API failed")
            stream.last_id = stream.hold[0].trade_id - 1
        self._release_held(stream)
        stream.backfilling = False
        stream.held_since = None

    def _record_missed(self, stream: StreamState, gap: Gap, why: str) -> None:
        stream.missed += gap.size
        stream.unhealed.append(gap)
        stream.last_id = gap.last
        logger.error("%s@%s: %d trades (%d..%d) not recovered: %s", stream.key[0], stream.key[1],
                     gap.size, gap.first, gap.last, why)

    # --- connections ------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            for key, last_id in self._resume.items():
                if key in self.streams:
                    self.streams[key].last_id = last_id
                    self._start_backfill(self.streams[key], None)
            while not self._stopping.is_set():
                connection = await self._connect()
                if connection is None:
                    break
                await self._serve(connection)
        except StreamError as exc:  # not retryable: an invalid stream, say
            logger.error("stream client stopped: %s", exc)
            self._fatal = exc
            self._ready.set()
        finally:
            await self._shutdown()

    async def _connect(self) -> Connection | None:
        """Open a connection, waiting out the backoff between failures; None when stopping."""
        while not self._stopping.is_set():
            if self._backoff.attempt or self.stats.connection_attempts:
                self.stats.state = "backoff"
                delay = self._backoff.next_delay()
                logger.info("reconnecting in %.2f s (attempt %d)", delay, self._backoff.attempt)
                if await self._wait_stopping(self._sleep(delay)):
                    return None
            connection = await self._open()
            if connection is not None:
                return connection
        return None

    async def _open(self) -> Connection | None:
        if self._before_connect is not None:
            self.stats.state = "waiting for connection budget"
            if await self._wait_stopping(self._before_connect()):
                return None
        self.stats.state = "connecting"
        self.stats.connection_attempts += 1
        names = [stream_name(*key) for key in self.streams]
        connection = Connection(self.config.connection_settings(), names, self, self._clock, spawn=self._tasks.spawn)
        try:
            opened = await unless_stopped(connection.open(), self._stopping)
        except ConnectionLost as exc:
            logger.warning("connection failed: %s", exc)
            return None
        if opened is STOPPED:  # a handshake that hangs must not hold a stop up
            connection.abort(ConnectionLost("client stopping"))
            return None
        logger.info("connected to %s", connection.url)
        return connection

    async def _serve(self, connection: Connection) -> None:
        """Read from `connection`, rotating it before its lifetime ends, until it ends or we stop."""
        self._primary = connection
        connection.start()
        if self._served:
            self.stats.reconnects += 1
        self._served = True
        while True:
            self.stats.state, self.stats.connected_since = "connected", self._primary.opened_wall
            primary = self._primary
            due = max(0.0, self.config.rotate_after - primary.age())
            await _first_of([primary.ended, self._rotate_now, self._stopping], due)
            if self._stopping.is_set():
                return
            if primary.ended.is_set():
                logger.warning("connection lost: %s", primary.end_reason)
                self._retire(primary)
                self._backoff.connection_ended(primary.age())
                self._primary = None
                return
            self._rotate_now.clear()
            await self._rotate(primary)

    async def _rotate(self, old: Connection) -> None:
        """Make before break: open the next connection, switch once it has caught up, close the old."""
        self.stats.state = "rotating"
        new = await self._open()
        if new is None:
            await self._wait_stopping(self._sleep(self._backoff.next_delay()))
            return
        self._successor, self._successor_held, self._successor_first = new, [], {}
        new.start()
        self._switched.clear()
        await _first_of([self._switched, old.ended, new.ended, self._stopping], self.config.overlap_timeout)
        if self._successor is new:
            if new.ended.is_set():
                self._successor = None
                self._retire(new)
                return
            self._switch_to(new)
        self.stats.rotations += 1
        await old.close(1000, "rotated")
        self._retire(old)

    def _successor_caught_up(self) -> bool:
        """True once every stream the new connection has data for is handed on up to that data."""
        for key, first_id in self._successor_first.items():
            stream = self.streams.get(key)
            if stream is not None and (stream.last_id is None or stream.last_id < first_id - 1):
                return False
        return bool(self._successor_first)

    def _switch_to(self, new: Connection) -> None:
        self._primary, self._successor = new, None
        held, self._successor_held = self._successor_held, []
        for trade in held:
            self._accept(trade)
        self._switched.set()
        logger.info("switched to %s", new.url)

    def _retire(self, connection: Connection) -> None:
        self.stats.frames_closed += connection.frames
        self.stats.probes += connection.probes

    async def _shutdown(self) -> None:
        """Close the connections cleanly (each close is bounded), end the backfills, release REST."""
        self.stats.state = "stopping"
        try:
            for connection in (self._successor, self._primary):
                if connection is not None:
                    await connection.close(1000, "client stopping")
                    self._retire(connection)
            self._primary = self._successor = None
        finally:
            if self._owns_rest:
                await self._rest.aclose()
            self._finish()

    def _finish(self) -> None:
        if not self._done:
            self.stats.state = "stopped" if self._fatal is None else "failed"
            self._done = True
        self._tasks.cancel()  # backfills and connection tasks; the runner itself is ending
        self._ready.set()
        self._room.set()

    def _abort_connections(self, reason: BaseException) -> None:
        for connection in (self._successor, self._primary):
            if connection is not None:
                connection.abort(reason)

    def _on_task_failure(self, failure: TaskFailed) -> None:
        """A background task failed unexpectedly (already logged): the whole client ends, loudly."""
        self.stats.task_failures += 1
        self.stats.state = "failed"
        if self._fatal is None:
            self._fatal = failure
        self._stopping.set()
        self._abort_connections(ConnectionLost(str(failure)))
        self._ready.set()
        self._room.set()

    async def _wait_stopping(self, awaitable: Awaitable[None]) -> bool:
        """Run `awaitable` unless asked to stop first; True if stopping."""
        await _first_of([self._stopping], None, awaitable)
        return self._stopping.is_set()


async def _first_of(events: list[asyncio.Event], timeout: float | None,
                    also: Awaitable[None] | None = None) -> None:
    """Wait until any event is set, `also` completes, or `timeout` passes."""
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(event.wait()) for event in events]
    if also is not None:
        waiters.append(asyncio.ensure_future(also))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)
