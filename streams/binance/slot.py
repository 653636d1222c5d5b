"""One logical combined connection for a set of streams: connect, reconnect with backoff, subscribe and
unsubscribe while running, and replace the connection before the exchange's 24 h cut-off or on a
`serverShutdown` notice by opening the next one first (make before break).

Spec: web-socket-streams.md, "General WSS information" (24 h lifetime, serverShutdown, 1024 streams per
connection), "Live Subscribing/Unsubscribing to streams", "WebSocket Limits" (5 incoming messages a second:
SUBSCRIBE requests go through the connection's token bucket, many streams per request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from streams.binance.backoff import Backoff
from streams.binance.connection import Connection, ConnectionSettings
from streams.binance.errors import ConnectionLost, ParseError
from streams.binance.protocol import ServerShutdown, Trade
from streams.binance.sequencer import Role
from streams.binance.streamid import StreamId
from streams.binance.waiting import STOPPED, unless_stopped

logger = logging.getLogger(__name__)

GATHER = 0.3  # s a new connection waits for more streams before it connects
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class SlotSink(Protocol):
    """The client: where a slot hands what its connections read, and what it asks about its streams."""

    def on_trade(self, slot: ConnectionSlot, role: Role, trade: Trade) -> None: ...

    def on_parse_error(self, slot: ConnectionSlot, error: ParseError) -> None: ...

    def on_switch(self, slot: ConnectionSlot) -> None: ...

    def on_successor_lost(self, slot: ConnectionSlot) -> None: ...

    def successors_caught_up(self, slot: ConnectionSlot) -> bool: ...

    @property
    def backlogged(self) -> bool: ...

    async def wait_for_room(self) -> None: ...


class ConnectionSlot:
    """Streams `keys` on one connection at a time (two during a rotation). `run()` is its task."""

    def __init__(self, index: int, settings: ConnectionSettings, sink: SlotSink, *, backoff: Backoff,
                 before_connect: Callable[[], Awaitable[None]] | None, spawn: Spawn, stopping: asyncio.Event,
                 rotate_after: float, overlap_timeout: float, sleep: Callable[[float], Awaitable[None]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.index = index
        self.keys: set[StreamId] = set()
        self.state = "idle"
        self.connection_attempts = 0
        self.reconnects = 0
        self.rotations = 0
        self.frames_closed = 0  # frames read by connections that have ended
        self.probes_closed = 0
        self.primary: Connection | None = None
        self.successor: Connection | None = None
        self._settings = settings
        self._sink = sink
        self._backoff = backoff
        self._before_connect = before_connect
        self._spawn = spawn
        self._stopping = stopping
        self._rotate_after = rotate_after
        self._overlap_timeout = overlap_timeout
        self._sleep = sleep
        self._clock = clock
        self._changed = asyncio.Event()   # keys added or removed: subscribe or unsubscribe
        self.synced = asyncio.Event()     # the connection in use carries exactly `keys`
        self._rotate_now = asyncio.Event()
        self._switched = asyncio.Event()
        self._served = False
        self.task: asyncio.Task[None] | None = None  # run(), as the client started it

    # --- the client's side ------------------------------------------------------------------------

    def add(self, keys: set[StreamId]) -> None:
        self.keys |= keys
        self.synced.clear()
        self._changed.set()

    def remove(self, keys: set[StreamId]) -> None:
        self.keys -= keys
        self.synced.clear()
        self._changed.set()

    @property
    def frames(self) -> int:
        return self.frames_closed + sum(c.frames for c in self._live())

    @property
    def probes(self) -> int:
        return self.probes_closed + sum(c.probes for c in self._live())

    @property
    def connected_at(self) -> float | None:
        return self.primary.opened_at if self.primary is not None and self.state == "connected" else None

    def abort(self, reason: BaseException) -> None:
        for connection in self._live():
            connection.abort(reason)

    def _live(self) -> list[Connection]:
        return [c for c in (self.primary, self.successor) if c is not None]

    # --- the connections' side (EventSink) --------------------------------------------------------

    def on_trade(self, connection: Connection, trade: Trade) -> None:
        if connection is self.primary:
            role = Role.PRIMARY
        elif connection is self.successor:
            role = Role.SUCCESSOR
        else:
            role = Role.RETIRED
        self._sink.on_trade(self, role, trade)
        if role is Role.SUCCESSOR and self._sink.successors_caught_up(self):
            self._switched.set()

    def on_shutdown_notice(self, connection: Connection, notice: ServerShutdown) -> None:
        logger.info("%s: serverShutdown notice (E=%d); rotating now", connection.url, notice.event_ts)
        if connection is self.primary:
            self._rotate_now.set()

    def on_parse_error(self, connection: Connection, error: ParseError) -> None:
        self._sink.on_parse_error(self, error)

    @property
    def backlogged(self) -> bool:
        return self._sink.backlogged

    async def wait_for_room(self) -> None:
        await self._sink.wait_for_room()

    # --- the task -----------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self.keys:
                    self.state = "idle"
                    self._changed.clear()
                    if await unless_stopped(self._changed.wait(), self._stopping) is STOPPED:
                        return
                    continue
                if not self._served and self.connection_attempts == 0:
                    # A new slot: streams usually come in a rush (a worker starting): gather them into the
                    # connect URL instead of one SUBSCRIBE each.
                    await unless_stopped(self._sleep(GATHER), self._stopping)
                connection = await self._connect()
                if connection is None:
                    return
                await self._serve(connection)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close both connections with a close frame (each bounded)."""
        self.state = "stopping"
        for connection in (self.successor, self.primary):
            if connection is not None:
                await connection.close(1000, "client stopping")
                self._retire(connection)
        self.primary = self.successor = None

    async def _connect(self) -> Connection | None:
        """Open a connection for the current keys, waiting out the backoff between failures."""
        while not self._stopping.is_set() and self.keys:
            if self._backoff.attempt or self.connection_attempts:
                self.state = "backoff"
                delay = self._backoff.next_delay()
                logger.info("slot %d: reconnecting in %.2f s (attempt %d)", self.index, delay, self._backoff.attempt)
                if await unless_stopped(self._sleep(delay), self._stopping) is STOPPED:
                    return None
            connection = await self._open()
            if connection is not None:
                return connection
        return None

    async def _open(self) -> Connection | None:
        if self._before_connect is not None:
            self.state = "waiting for connection budget"
            if await unless_stopped(self._before_connect(), self._stopping) is STOPPED:
                return None
        self.state = "connecting"
        self.connection_attempts += 1
        names = sorted(str(key) for key in self.keys)
        connection = Connection(self._settings, names, self, self._clock, spawn=self._spawn)
        try:
            opened = await unless_stopped(connection.open(), self._stopping)
        except ConnectionLost as exc:
            logger.warning("slot %d: connection failed: %s", self.index, exc)
            return None
        if opened is STOPPED:  # a handshake that hangs must not hold a stop up
            connection.abort(ConnectionLost("client stopping"))
            return None
        logger.info("slot %d: connected with %d streams (%s)", self.index, len(names), _short(connection.url))
        return connection

    async def _serve(self, connection: Connection) -> None:
        """Read from `connection` (rotating it before its lifetime ends) until it is lost or we stop."""
        self.primary = connection
        connection.start()
        if self._served:
            self.reconnects += 1
        self._served = True
        while True:
            self.state = "connected"
            primary = self.primary
            assert primary is not None
            if not self.keys:  # every stream was removed: the connection is not needed any more
                logger.info("slot %d: no streams left; closing its connection", self.index)
                await primary.close(1000, "no streams")
                self._retire(primary)
                self.primary = None
                return
            await self._sync_subscriptions(primary)
            due = max(0.0, self._rotate_after - primary.age())
            await _first_of([primary.ended, self._rotate_now, self._stopping, self._changed], due)
            if self._stopping.is_set():
                return
            if primary.ended.is_set():
                logger.warning("slot %d: connection lost: %s", self.index, primary.end_reason)
                self._retire(primary)
                self._backoff.connection_ended(primary.age())
                self.primary = None
                return
            if self._changed.is_set():
                continue
            self._rotate_now.clear()
            if not await self._rotate(primary):
                return

    async def _sync_subscriptions(self, connection: Connection) -> None:
        """SUBSCRIBE what was added and UNSUBSCRIBE what was removed since the connection opened: one
        request each, through the connection's token bucket (5 messages a second at most)."""
        self._changed.clear()
        wanted = {str(key) for key in self.keys}
        have = set(connection.streams)
        try:
            if added := sorted(wanted - have):
                reply = await connection.subscribe(added)
                if not reply.ok:
                    logger.error("slot %d: SUBSCRIBE %d streams refused: %s %s", self.index, len(added),
                                 reply.error_code, reply.error_message)
            if removed := sorted(have - wanted):
                await connection.unsubscribe(removed)
        except (ConnectionLost, TimeoutError) as exc:
            logger.warning("slot %d: subscription change failed (%s); reconnecting", self.index, exc)
            connection.abort(ConnectionLost(f"subscription change failed: {exc}"))
            return
        if not self._changed.is_set():
            self.synced.set()

    async def _rotate(self, old: Connection) -> bool:
        """Make before break: open the next connection, switch once it has caught up, close the old.
        False when no connection is left (reconnect)."""
        self.state = "rotating"
        new = await self._open()
        if new is None:
            await unless_stopped(self._sleep(self._backoff.next_delay()), self._stopping)
            return True
        self.successor = new
        self._switched.clear()
        new.start()
        await _first_of([self._switched, old.ended, new.ended, self._stopping], self._overlap_timeout)
        if new.ended.is_set() or self._stopping.is_set():
            self.successor = None
            self._retire(new)
            self._sink.on_successor_lost(self)
            if old.ended.is_set():  # both gone: reconnect from scratch
                self._retire(old)
                self.primary = None
                return False
            return True
        self.primary, self.successor = new, None  # caught up, the old one lost, or the overlap timed out
        self._sink.on_switch(self)
        self.rotations += 1
        logger.info("slot %d: switched to the new connection (%d streams)", self.index, len(self.keys))
        await old.close(1000, "rotated")
        self._retire(old)
        return True

    def _retire(self, connection: Connection) -> None:
        self.frames_closed += connection.frames
        self.probes_closed += connection.probes
        connection.frames = connection.probes = 0  # counted once


async def _first_of(events: list[asyncio.Event], timeout: float | None) -> None:
    """Wait until any event is set or `timeout` passes."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def _short(url: str) -> str:
    return url if len(url) <= 120 else f"{url[:100]}...({len(url)} characters)"
