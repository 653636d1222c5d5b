"""One WebSocket connection to the exchange: open, read and parse frames, watch for silence, send requests.

Spec: web-socket-streams.md, "General WSS information" (pings every 20 s, answer within a minute;
24 h lifetime; serverShutdown) and "WebSocket Limits" (5 incoming messages a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from streams.binance.errors import ConnectionLost, HandshakeRejected, ParseError, SilentConnection
from streams.binance.protocol import (
    Event,
    Reply,
    ServerShutdown,
    Trade,
    combined_stream_url,
    list_subscriptions_request,
    parse_frame,
    subscribe_request,
    unsubscribe_request,
)
from streams.binance.ratelimit import TokenBucket

logger = logging.getLogger(__name__)

_request_ids = itertools.count(1)


@dataclass(frozen=True)
class ConnectionSettings:
    """How to talk to the exchange. Times in seconds."""

    ws_url: str
    open_timeout: float = 10.0
    # websockets' own keepalive: our pings find a dead TCP path; it also answers the server's pings.
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    # No frame at all for this long: probe with LIST_SUBSCRIPTIONS; no answer within probe_timeout: dead.
    silence_timeout: float = 10.0
    probe_timeout: float = 5.0
    # Under the exchange's 5 incoming messages a second, leaving room for pings and pongs.
    control_rate: float = 3.0
    max_frame_bytes: int = 4 << 20
    max_queue: int = 4096
    micros: bool = False  # timeUnit=MICROSECOND: event and trade times in microseconds


class EventSink(Protocol):
    """Where a connection hands what it reads (the client)."""

    def on_trade(self, connection: Connection, trade: Trade) -> None: ...

    @property
    def backlogged(self) -> bool: ...

    async def wait_for_room(self) -> None: ...

    def on_shutdown_notice(self, connection: Connection, notice: ServerShutdown) -> None: ...

    def on_parse_error(self, connection: Connection, error: ParseError) -> None: ...


Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


def _create_task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.create_task(coro, name=name)


class Connection:
    """A connection to a combined stream, with its reader and watchdog tasks.

    The tasks are started through `spawn` (the client's supervisor): an unexpected error in one of them
    ends the client loudly instead of leaving a connection that reads nothing."""

    def __init__(self, settings: ConnectionSettings, streams: list[str], sink: EventSink,
                 clock: Callable[[], float] = time.monotonic, *, spawn: Spawn = _create_task) -> None:
        self.settings = settings
        self.streams = list(streams)
        self.url = combined_stream_url(settings.ws_url, self.streams)
        if settings.micros:
            self.url += "&timeUnit=MICROSECOND"
        self._sink = sink
        self._clock = clock
        self._spawn = spawn
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._bucket = TokenBucket(rate=settings.control_rate, burst=1.0)
        self.frames = 0
        self.probes = 0
        self.opened_at = 0.0
        self.opened_wall = 0.0
        self.last_frame_at = 0.0  # the client's clock: any frame, a probe's answer included
        self.end_reason: BaseException | None = None
        self.ended = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the connection (then `start()` it); HandshakeRejected for a 4xx answer, ConnectionLost
        for anything else."""
        s = self.settings
        try:
            self._ws = await connect(
                self.url, open_timeout=s.open_timeout, ping_interval=s.ping_interval,
                ping_timeout=s.ping_timeout, max_size=s.max_frame_bytes, max_queue=s.max_queue,
                close_timeout=2.0, compression=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = bytes(exc.response.body or b"")[:200].decode(errors="replace")
            if 400 <= status < 500 and status != 429:
                raise HandshakeRejected(status, body) from exc
            raise ConnectionLost(f"handshake answered HTTP {status}: {body}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ConnectionLost(f"cannot connect to {self.url}: {type(exc).__name__}: {exc}") from exc
        self.opened_at, self.opened_wall = self._clock(), time.time()
        self.last_frame_at = self.opened_at

    def start(self) -> None:
        """Start reading (frames wait in the socket's queue until then): the owner calls it once it knows
        what the connection is for, so that no frame meets an owner that does not know it yet."""
        self._tasks = [self._spawn(self._read(), f"read {self.url}"), self._spawn(self._watch(), f"watch {self.url}")]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame (bounded wait), then stop the tasks."""
        if self._ws is not None:
            try:
                await asyncio.wait_for(self._ws.close(code, reason), timeout=3.0)
            except (TimeoutError, OSError, ConnectionClosed):
                self._ws.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._end(ConnectionLost(f"closed by us ({code} {reason})".strip()))

    def abort(self, reason: BaseException) -> None:
        """Drop the connection at once (no close handshake): it is dead, being replaced, or fenced."""
        self._end(reason)
        if self._ws is not None:
            self._ws.transport.abort()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    def age(self) -> float:
        return self._clock() - self.opened_at

    # --- requests ---------------------------------------------------------------------------------

    async def request(self, build: Callable[[int], bytes], timeout: float = 10.0) -> Reply:
        """Send a SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS request and wait for its reply."""
        if self._ws is None:
            raise ConnectionLost("not open")
        request_id = next(_request_ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            while (delay := self._bucket.wait_time(self._clock())) > 0:
                await asyncio.sleep(delay)
            await self._ws.send(build(request_id).decode())
            return await asyncio.wait_for(future, timeout)
        except ConnectionClosed as exc:
            raise ConnectionLost(f"connection closed while sending a request: {exc}") from exc
        finally:
            self._pending.pop(request_id, None)

    async def subscribe(self, streams: list[str]) -> Reply:
        reply = await self.request(lambda rid: subscribe_request(streams, rid))
        if reply.ok:
            self.streams.extend(s for s in streams if s not in self.streams)
        return reply

    async def unsubscribe(self, streams: list[str]) -> Reply:
        reply = await self.request(lambda rid: unsubscribe_request(streams, rid))
        if reply.ok:
            self.streams = [s for s in self.streams if s not in streams]
        return reply

    async def list_subscriptions(self) -> Reply:
        return await self.request(list_subscriptions_request)

    # --- tasks ------------------------------------------------------------------------------------

    async def _read(self) -> None:
        assert self._ws is not None
        ws, sink = self._ws, self._sink
        try:
            while True:
                frame = await ws.recv()
                self.frames += 1
                self.last_frame_at = self._clock()
                try:
                    event: Event = parse_frame(frame, time.time_ns() // 1000)
                except ParseError as exc:
                    sink.on_parse_error(self, exc)
                    continue
                if type(event) is Trade:
                    sink.on_trade(self, event)
                    if sink.backlogged:  # the consumer is behind: stop reading (TCP pushes back)
                        await sink.wait_for_room()
                elif type(event) is Reply:
                    self._resolve(event)
                elif type(event) is ServerShutdown:
                    sink.on_shutdown_notice(self, event)
        except ConnectionClosed as exc:
            self._end(ConnectionLost(_describe_close(exc)))

    async def _watch(self) -> None:
        """Treat an open socket that delivers nothing, not even a probe's answer, as dead."""
        s = self.settings
        seen, quiet_since = self.frames, self._clock()
        while not self.ended.is_set():
            await asyncio.sleep(min(s.silence_timeout, s.probe_timeout) / 2)
            if self.frames != seen:
                seen, quiet_since = self.frames, self._clock()
                continue
            quiet = self._clock() - quiet_since
            if quiet >= s.silence_timeout + s.probe_timeout:
                logger.warning("%s: silent for %.1f s, probe unanswered; dropping it", self.url, quiet)
                self.abort(SilentConnection(f"no frame for {quiet:.1f} s"))
                return
            if quiet >= s.silence_timeout and not self._pending:
                self._tasks.append(self._spawn(self._probe(), f"probe {self.url}"))

    async def _probe(self) -> None:
        self.probes += 1
        with contextlib.suppress(ConnectionLost, TimeoutError):  # the watchdog judges the silence
            await self.list_subscriptions()

    def _resolve(self, reply: Reply) -> None:
        future = self._pending.get(reply.id) if isinstance(reply.id, int) else None
        if future is not None and not future.done():
            future.set_result(reply)
        elif not reply.ok:
            logger.warning("%s: error reply %s: %s", self.url, reply.error_code, reply.error_message)

    def _end(self, reason: BaseException) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionLost(str(reason)))
                    future.exception()  # its request may have been cancelled meanwhile: nobody else reads it


def _describe_close(exc: ConnectionClosed) -> str:
    if exc.rcvd is None:
        return "connection dropped without a close frame"
    return f"closed by the server: {exc.rcvd.code} {exc.rcvd.reason}".strip()
