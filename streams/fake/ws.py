"""The fake exchange's WebSocket server: routing, live methods, keepalive, limits and per-connection sends.

Spec: web-socket-streams.md, "General WSS information", "WebSocket Limits", "Server Shutdown" and
"Live Subscribing/Unsubscribing to streams".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from streams.binance.protocol import TRADE, Trade
from streams.fake.faults import GARBAGE_VARIANTS, Fault, garbage_frame
from streams.fake.market import Market, decimal_text, micros, trade_payload
from streams.fake.state import Stats

logger = logging.getLogger(__name__)

STREAM_RE: Final = re.compile(r"[a-z0-9]{2,20}@(trade|aggTrade)")
MAX_STREAMS: Final = 1024  # "A single connection can listen to a maximum of 1024 streams."
METHODS: Final = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_MICROSECOND: Final = ("MICROSECOND", "microsecond")
_TIME_UNITS: Final = (*_MICROSECOND, "MILLISECOND", "millisecond")
_BULK_CHUNK: Final = 256 * 1024
_COUNTED: Final = (Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG)

Outgoing = tuple[bool, bytes]  # (is_text, payload)


class Bulk:
    """Pre-encoded WebSocket frames in large chunks, written straight to the transport (burst)."""

    __slots__ = ("chunks",)

    def __init__(self, payloads: list[bytes]) -> None:
        self.chunks: list[tuple[bytes, int]] = []
        buf, count = bytearray(), 0
        for payload in payloads:
            buf += frame_header(len(payload))
            buf += payload
            count += 1
            if len(buf) >= _BULK_CHUNK:
                self.chunks.append((bytes(buf), count))
                buf, count = bytearray(), 0
        if count:
            self.chunks.append((bytes(buf), count))


def frame_header(length: int, opcode: int = 0x1) -> bytes:
    """The header of an unmasked final server frame (RFC 6455 section 5.2)."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def encode_events(stream: str, trades: list[Trade], combined: bool, in_micros: bool) -> list[bytes]:
    dumps = orjson.dumps
    if combined:
        return [dumps({"stream": stream, "data": trade_payload(t, in_micros)}) for t in trades]
    return [dumps(trade_payload(t, in_micros)) for t in trades]


def _error(code: int, msg: str, request_id: Any) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": request_id}


def _valid_id(value: Any) -> bool:
    # "Live Subscribing": an unsigned integer, an alphanumeric string of at most 36, or null.
    if value is None:
        return True
    if type(value) is int:
        return 0 <= value < 2**64
    return isinstance(value, str) and len(value) <= 36 and (value.isascii() and value.isalnum())


class FakeServerConnection(ServerConnection):
    """A server connection that counts incoming frames against the per-connection message limit."""

    session: Session | None = None

    def process_event(self, event: Any) -> None:
        # Pongs answering our own pings are not counted, so short test ping intervals stay legal.
        if (
            self.session is not None
            and isinstance(event, Frame)
            and event.opcode in _COUNTED
            and not (event.opcode is Opcode.PONG and bytes(event.data) in self.pending_pings)
        ):
            self.session.frame_received()
        super().process_event(event)


class Session:
    """One client connection: its subscriptions, properties, send queue and timers."""

    def __init__(
        self, server: WsServer, ws: FakeServerConnection, streams: list[str], combined: bool, in_micros: bool
    ) -> None:
        self.server, self.ws = server, ws
        self.subscriptions: dict[str, None] = dict.fromkeys(streams)
        self.combined, self.in_micros = combined, in_micros
        self.queue: deque[Outgoing | Bulk] = deque()
        self.wakeup = asyncio.Event()
        self.running = asyncio.Event()  # cleared while stalled
        self.running.set()
        self.closing: str | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.received: deque[float] = deque()
        self.stall_timer: asyncio.TimerHandle | None = None
        self.garbage_turn = 0
        self.loop = asyncio.get_running_loop()
        self.opened = self.loop.time()

    def start(self) -> None:
        self.spawn(self._write())
        self.spawn(self._watch())

    def spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def has_symbol(self, symbol: str | None) -> bool:
        if symbol is None:
            return True
        prefix = symbol.lower() + "@"
        return any(s.startswith(prefix) for s in self.subscriptions)

    # --- sending ------------------------------------------------------------------------------

    def enqueue(self, item: Outgoing | Bulk) -> None:
        if self.closing is not None:
            return
        self.queue.append(item)
        self.wakeup.set()
        if len(self.queue) > self.server.send_queue_limit and self.running.is_set():
            self.disconnect("slow_consumer")  # the real exchange drops clients that cannot keep up

    async def _write(self) -> None:
        ws, stats = self.ws, self.server.stats
        with contextlib.suppress(ConnectionClosed):
            while True:
                if not self.queue:
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    continue
                await self.running.wait()
                item = self.queue.popleft()
                if isinstance(item, Bulk):
                    await self._write_bulk(item)
                else:
                    await ws.send(item[1], text=item[0])
                    stats.messages_sent += 1

    async def _write_bulk(self, bulk: Bulk) -> None:
        ws, stats = self.ws, self.server.stats
        for chunk, count in bulk.chunks:
            await self.running.wait()
            if ws.protocol.state is not State.OPEN or self.closing is not None:
                return
            ws.transport.write(chunk)  # whole frames only, so they never interleave with websockets' own
            stats.messages_sent += count
            await ws.drain()

    # --- keepalive and lifetime ("General WSS information") ------------------------------------

    async def _watch(self) -> None:
        server, loop = self.server, self.loop
        deadline = self.opened + server.max_lifetime
        next_ping = self.opened + server.ping_interval
        pending: deque[tuple[float, asyncio.Future[float]]] = deque()
        sequence = 0
        with contextlib.suppress(ConnectionClosed):
            while self.closing is None:
                while pending and pending[0][1].done():
                    pending.popleft()
                # Stalled, the server still pings and still drops a connection whose pongs it does not
                # read in time, like a real server behind a blackhole: a client that went away meanwhile
                # (it cannot be seen while reading is paused) does not stay a session for ever.
                now = loop.time()
                if now >= deadline:
                    self.disconnect("lifetime", 1000, "Connection lifetime expired")
                    return
                if pending and now - pending[0][0] >= server.pong_timeout:
                    self.disconnect("pong_timeout", 1011, "Pong timeout")
                    return
                if now >= next_ping:
                    sequence += 1
                    # websockets returns the pong waiter, a Future, typed as an Awaitable.
                    waiter = await self.ws.ping(f"{int(time.time() * 1000)}-{sequence}")
                    pending.append((now, asyncio.ensure_future(waiter)))
                    next_ping = now + server.ping_interval
                wake = min(deadline, next_ping, pending[0][0] + server.pong_timeout if pending else deadline)
                await asyncio.sleep(max(0.0, wake - loop.time()))

    # --- limits and faults ---------------------------------------------------------------------

    def frame_received(self) -> None:
        # "WebSocket Limits": 5 incoming messages per second (pings, pongs, JSON messages).
        now, received = self.loop.time(), self.received
        self.server.stats.messages_received += 1
        received.append(now)
        while received and now - received[0] >= 1.0:
            received.popleft()
        if len(received) > self.server.message_limit:
            self.disconnect("message_limit", 1008, "Too many messages")

    def disconnect(self, reason: str, code: int | None = None, text: str = "") -> None:
        """Close once, counted by reason: with a close frame, or abort the TCP connection (code None)."""
        if self.closing is not None:
            return
        self.closing = reason
        self.queue.clear()
        self.server.stats.disconnects[reason] += 1
        logger.info("fake ws %s: disconnecting (%s)", self.ws.id, reason)
        if code is None:
            self.ws.transport.abort()
        else:
            self.server.spawn(self.ws.close(code, text))

    def apply(self, fault: Fault) -> None:
        self.server.stats.faults[fault.kind] += 1
        if fault.kind == "drop":
            self.disconnect("fault_drop")
        elif fault.kind == "close":
            self.disconnect("fault_close", fault.code, fault.reason)
        elif fault.kind == "stall":
            self.stall(fault.duration)
        elif fault.kind == "garbage":
            self.send_garbage(fault.variant, fault.symbol)
        elif fault.kind == "shutdown":
            self.announce_shutdown(fault.grace)
        elif fault.kind == "replay":
            self.replay(fault.symbol, fault.count)

    def stall(self, duration: float | None) -> None:
        """Go silent both ways: hold sends, stop reading (so the client's pings get no pong)."""
        if self.closing is not None or not self.running.is_set():
            return
        self.running.clear()
        self.ws.transport.pause_reading()
        if duration is not None:
            self.stall_timer = self.loop.call_later(duration, self.unstall)

    def unstall(self) -> None:
        if self.running.is_set():
            return
        self.running.set()
        if not self.ws.transport.is_closing():
            self.ws.transport.resume_reading()

    def send_garbage(self, variant: str | None, symbol: str | None = None) -> None:
        """One bad frame, labelled with a stream of `symbol` (any stream when None); variants in turn."""
        if variant is None:
            variant = GARBAGE_VARIANTS[self.garbage_turn % len(GARBAGE_VARIANTS)]
            self.garbage_turn += 1
        streams = [s for s in self.subscriptions if symbol is None or s.startswith(symbol.lower() + "@")]
        stream = next(iter(streams), "btcusdt@trade")
        name, _, channel = stream.partition("@")
        next_id, price = self._next_of(name, channel)
        now_ms = int(time.time() * 1000)
        self.enqueue(
            garbage_frame(
                variant,
                name.upper(),
                stream if self.combined else None,
                micros(now_ms) if self.in_micros else now_ms,
                channel=channel,
                next_id=next_id,
                price=price,
            )
        )

    def _next_of(self, name: str, channel: str) -> tuple[int, str]:
        """The id a stream's next event will carry and its latest price, so poison frames look real."""
        market = self.server.market_of(name.upper())
        if market is None:  # a stream of an unlisted symbol: no record for any id to collide with
            return 0, "1.00000000"
        if channel == TRADE:
            next_id, record = market.next_id, market.trades
        else:
            next_id, record = market.next_agg_id, market.agg_trades
        return next_id, record[-1].price_text if record else decimal_text(market.spec.start_price)

    def replay(self, symbol: str | None, count: int) -> None:
        """Send the last `count` trades of each subscribed stream of `symbol` (all when None) again.

        As a replaying server would: the same ids and content as first sent, oldest first, so the client
        sees the ids go back; the record is not touched.
        """
        if self.closing is not None:
            return
        for stream in list(self.subscriptions):
            name, _, channel = stream.partition("@")
            market = self.server.market_of(name.upper())
            if market is None or (symbol is not None and name != symbol.lower()):
                continue  # an unlisted symbol has no record to replay
            trades = (market.trades if channel == TRADE else market.agg_trades)[-count:]
            self.server.stats.replayed += len(trades)
            for payload in encode_events(stream, trades, self.combined, self.in_micros):
                self.enqueue((True, payload))

    def announce_shutdown(self, grace: float) -> None:
        # "Server Shutdown": the event, then the disconnection.
        event_ts = int(time.time() * 1000)
        data = {"e": "serverShutdown", "E": event_ts * 1000 if self.in_micros else event_ts}
        self.enqueue(
            (True, orjson.dumps({"stream": "!serverShutdown", "data": data} if self.combined else data))
        )
        self.spawn(self._close_after(grace))

    async def _close_after(self, grace: float) -> None:
        await asyncio.sleep(grace)
        self.disconnect("shutdown", 1001, "Server shutdown")

    # --- live methods ("Live Subscribing/Unsubscribing to streams") ----------------------------

    def answer(self, message: str | bytes) -> dict[str, Any]:  # noqa: PLR0911 - one return per spec error
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return _error(3, f"Invalid JSON: expected value at line {exc.lineno} column {exc.colno}", None)
        if not isinstance(request, dict):
            return _error(
                2, "Invalid request: invalid type: expected struct Request at line 1 column 1", None
            )
        if "method" not in request:
            return _error(2, f"Invalid request: missing field `method` at line 1 column {len(text)}", None)
        request_id = request.get("id")
        if "id" not in request or not _valid_id(request_id):
            return _error(2, "Invalid request: request ID must be an unsigned integer", None)
        method, params = request["method"], request.get("params", [])
        if method not in METHODS:
            column = text.find(orjson.dumps(method).decode()) + len(orjson.dumps(method))
            expected = ", ".join(f"`{m}`" for m in METHODS)
            return _error(
                2,
                f"Invalid request: unknown variant `{method}`, expected one of {expected} "
                f"at line 1 column {column}",
                request_id,
            )
        if not isinstance(params, list):
            return _error(2, "Invalid request: invalid type: expected a sequence", request_id)
        return self._dispatch(method, params, request_id)

    def _dispatch(  # noqa: PLR0911, PLR0912 - the spec's error table, in order
        self, method: str, params: list[Any], request_id: Any
    ) -> dict[str, Any]:
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(s, str) and STREAM_RE.fullmatch(s) for s in params):
                return _error(2, "Invalid request: invalid stream", request_id)
            if method == "UNSUBSCRIBE":
                for stream in params:
                    self.server.unsubscribe(self, stream)
                return {"result": None, "id": request_id}
            new = [s for s in dict.fromkeys(params) if s not in self.subscriptions]
            if len(self.subscriptions) + len(new) > MAX_STREAMS:
                return _error(2, f"Invalid request: too many streams (max {MAX_STREAMS})", request_id)
            for stream in new:
                self.server.subscribe(self, stream)
            return {"result": None, "id": request_id}
        if method == "LIST_SUBSCRIPTIONS":
            if params:
                return _error(2, "Invalid request: too many parameters", request_id)
            return {"result": list(self.subscriptions), "id": request_id}
        if len(params) > (2 if method == "SET_PROPERTY" else 1):
            return _error(2, "Invalid request: too many parameters", request_id)
        if not params or not isinstance(params[0], str):
            return _error(2, "Invalid request: property name must be a string", request_id)
        if params[0] != "combined":
            return _error(0, "Unknown property", request_id)
        if method == "GET_PROPERTY":
            return {"result": self.combined, "id": request_id}
        if len(params) < 2 or type(params[1]) is not bool:
            return _error(1, "Invalid value type: expected Boolean", request_id)
        self.combined = params[1]
        return {"result": None, "id": request_id}


class WsServer:
    """Serves `/ws/<stream>`, `/ws` and `/stream?streams=a/b`, and fans trades out to subscribers."""

    def __init__(
        self,
        stats: Stats,
        *,
        host: str,
        port: int,
        ping_interval: float,
        pong_timeout: float,
        max_lifetime: float,
        message_limit: int,
        connection_limit: int,
        connection_window: float,
        send_queue_limit: int,
        is_down: Callable[[], bool],
        market_of: Callable[[str], Market | None],
    ) -> None:
        self.stats, self.host, self.port = stats, host, port
        self.ping_interval, self.pong_timeout, self.max_lifetime = ping_interval, pong_timeout, max_lifetime
        self.message_limit, self.send_queue_limit = message_limit, send_queue_limit
        self.connection_limit, self.connection_window = connection_limit, connection_window
        self.is_down = is_down
        self.market_of = market_of  # by symbol, upper case: the record that replays and poison frames follow
        self.sessions: set[Session] = set()
        self.by_stream: dict[str, set[Session]] = defaultdict(set)
        self._attempts: dict[str, deque[float]] = defaultdict(deque)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: Server | None = None

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            create_connection=FakeServerConnection,
            ping_interval=None,
            ping_timeout=None,
            compression=None,
            close_timeout=1.0,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def active_connections(self, stream: str | None = None) -> int:
        if stream is None:
            return len(self.sessions)
        return len(self.by_stream.get(stream, ()))

    def subscribe(self, session: Session, stream: str) -> None:
        session.subscriptions[stream] = None
        self.by_stream[stream].add(session)
        self.stats.connections_opened[stream] += 1

    def unsubscribe(self, session: Session, stream: str) -> None:
        session.subscriptions.pop(stream, None)
        subscribers = self.by_stream.get(stream)
        if subscribers is not None:
            subscribers.discard(session)
            if not subscribers:
                del self.by_stream[stream]

    def publish(self, stream: str, trades: list[Trade], bulk: bool = False) -> None:
        """Send trades to every subscriber of `stream`, encoded once per (combined, time unit)."""
        sessions = self.by_stream.get(stream)
        if not sessions or not trades:
            return
        encoded: dict[tuple[bool, bool], list[bytes]] = {}
        bulks: dict[tuple[bool, bool], Bulk] = {}
        for session in list(sessions):
            key = (session.combined, session.in_micros)
            if key not in encoded:
                encoded[key] = encode_events(stream, trades, *key)
            if bulk:
                if key not in bulks:
                    bulks[key] = Bulk(encoded[key])
                session.enqueue(bulks[key])
            else:
                for payload in encoded[key]:
                    session.enqueue((True, payload))

    def _refuse(
        self,
        connection: ServerConnection,
        status: int,
        reason: str,
        body: dict[str, Any],
        retry_after: int | None = None,
    ) -> Response:
        self.stats.connections_refused[reason] += 1
        response = connection.respond(status, orjson.dumps(body).decode())
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    def _process_request(  # noqa: PLR0911 - one refusal per reason
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        self.stats.connection_attempts += 1
        if self.is_down():
            return self._refuse(connection, 503, "down", {"code": -1001, "msg": "Service unavailable."})
        now, attempts = time.monotonic(), self._attempts[str(connection.remote_address[0])]
        attempts.append(now)
        while attempts and now - attempts[0] >= self.connection_window:
            attempts.popleft()
        if len(attempts) > self.connection_limit:  # "300 connections per attempt every 5 minutes per IP"
            return self._refuse(
                connection,
                429,
                "connection_limit",
                {"code": -1003, "msg": "Too many connection attempts."},
                retry_after=max(1, int(self.connection_window - (now - attempts[0]) + 1)),
            )
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        time_unit = query.get("timeUnit", [None])[-1]
        if time_unit not in (None, *_TIME_UNITS):
            return self._refuse(
                connection, 400, "invalid", {"code": 2, "msg": "Invalid request: invalid timeUnit"}
            )
        if url.path in ("/ws", "/ws/"):
            streams, combined = [], False
        elif url.path.startswith("/ws/"):
            streams, combined = [s for s in url.path[4:].split("/") if s], False
        elif url.path in ("/stream", "/stream/"):
            streams, combined = [s for s in "/".join(query.get("streams", [])).split("/") if s], True
        else:
            return self._refuse(
                connection, 404, "not_found", {"code": 2, "msg": "Invalid request: unknown path"}
            )
        streams = list(dict.fromkeys(streams))
        if not all(STREAM_RE.fullmatch(s) for s in streams):
            return self._refuse(
                connection, 400, "invalid", {"code": 2, "msg": "Invalid request: invalid stream"}
            )
        if len(streams) > MAX_STREAMS:
            return self._refuse(
                connection, 400, "invalid", {"code": 2, "msg": "Invalid request: too many streams"}
            )
        assert isinstance(connection, FakeServerConnection)
        connection.session = Session(self, connection, streams, combined, time_unit in _MICROSECOND)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, FakeServerConnection) and ws.session is not None
        session = ws.session
        self.sessions.add(session)
        for stream in list(session.subscriptions):
            self.subscribe(session, stream)
        session.start()
        try:
            async for message in ws:
                if session.closing is None:  # after a limit breach, read but do not answer
                    session.enqueue((True, orjson.dumps(session.answer(message))))
        except ConnectionClosed:
            pass
        finally:
            self.sessions.discard(session)
            for stream in list(session.subscriptions):
                self.unsubscribe(session, stream)
            await session.stop()
