"""The browser's WebSocket: live trades for every symbol or one, and the streams' state (read-only).

A page is a local subscriber of its web process's hub (`web.live.hub`), never a channel-layer member
of its own: the layer sees one member per process, so pages come and go without touching Redis and
cannot leave stale memberships behind.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, WebSocketDisconnectEvent, WebSocketReceiveEvent
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from streams.binance.errors import InvalidStreamName
from streams.binance.protocol import normalize_symbol
from web.live.hub import Hub, live_hub
from web.live.page import Direct, Page
from web.live.wire import CLOSE_BAD_SYMBOL, CLOSE_SERVER_FULL, CLOSE_TOO_BIG, close_reason

if TYPE_CHECKING:
    from channels.consumer import _ChannelScope
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

logger = logging.getLogger(__name__)

__all__ = ["CLOSE_BAD_SYMBOL", "TradesConsumer"]

# Pages get no channel-layer channel of their own: an alias that names no layer makes Channels skip it.
NO_LAYER = "live pages use the process's hub"
CLOSE_TIMEOUT = 5.0  # s a close may wait for a page that does not read; then its connection is aborted


def direct_writer(send: ASGISendCallable) -> Direct | None:
    """With uvicorn's websockets-sansio protocol (the Procfile's web process, uvicorn 0.54): a ready frame
    written straight to the connection's transport while uvicorn's own backpressure flag says it is
    writable. This skips a task wake-up, the ASGI send and the framing per page and frame, the fan-out's
    cost at 2,000 pages (docs/live-page.md, "The live page at scale"); frames stay whole, so they interleave with
    uvicorn's pings and close safely. Any other server (or version): None, and the ASGI send is used."""
    owner = getattr(send, "__self__", None)
    if type(owner).__module__ != "uvicorn.protocols.websockets.websockets_sansio_impl" or not all(
            hasattr(owner, name) for name in ("transport", "writable", "close_sent", "disconnected")):
        return None
    protocol = cast("WebSocketsSansIOProtocol", owner)

    def write(data: bytes) -> bool:
        if protocol.close_sent or protocol.disconnected or protocol.transport.is_closing():
            raise ConnectionError("the page's connection is closing")
        if not protocol.writable.is_set():
            return False
        protocol.transport.write(data)
        return True

    return write


class TradesConsumer(AsyncWebsocketConsumer):
    """`ws/trades/`: every symbol's trades; `ws/trades/<symbol>/`: one symbol's. Both get the state;
    `?format=compact` gets the trades in the live page's compact frames (web.live.wire)."""

    channel_layer_alias = NO_LAYER
    hub: Hub | None = None
    page: Page | None = None

    async def __call__(self, scope: _ChannelScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:  # also when the handler is cancelled without a disconnect: the hub never keeps a dead page
            await self._leave()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' own, without its `aclose_old_connections()` before every event: this consumer never
        touches the database, and that is a hop through Django's one sync thread per connect, per frame a
        page sends and per disconnect (2,000 pages reconnecting after a restart queued behind each other)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message: WebSocketDisconnectEvent) -> None:
        """Channels' own, without the database clean-up (see dispatch)."""
        await self.disconnect(message["code"])
        raise StopConsumer

    async def connect(self) -> None:
        symbol = self.scope["url_route"]["kwargs"].get("symbol")
        if symbol is not None:
            try:
                symbol = normalize_symbol(symbol)
            except InvalidStreamName:
                await self.close(code=CLOSE_BAD_SYMBOL)
                return
        compact = parse_qs(self.scope.get("query_string", b"").decode()).get("format") == ["compact"]
        hub = live_hub()
        client = self.scope.get("client")
        address = str(client[0]) if client else None  # the client's own address (behind a trusted proxy: its)
        refused_before = hub.stats.refused_address
        page = hub.join(symbol, self._send_frame, self._close_page, compact=compact, address=address)
        await self.accept()
        if page is None:  # accepted first so that the page can read why, and retry later
            why = (f"{hub.config.max_pages_per_address} live pages from your address already"
                   if hub.stats.refused_address > refused_before
                   else f"{hub.config.max_pages} live pages on this process")
            await self.close(code=CLOSE_SERVER_FULL, reason=close_reason(f"server busy: {why}; try again later"))
            return
        self.hub, self.page = hub, page
        hub.start_page(page, direct_writer(self.base_send))

    async def disconnect(self, code: int) -> None:
        await self._leave()

    async def websocket_receive(self, message: WebSocketReceiveEvent) -> None:
        """Read-only: small frames are ignored; one over LIVE_MAX_FRAME closes the socket (1009)."""
        text, data = message.get("text"), message.get("bytes")
        size = len(data) if data is not None else len(text.encode()) if text is not None else 0
        if size > settings.LIVE_MAX_FRAME:
            if self.hub is not None:
                self.hub.stats.too_big += 1
            logger.info("closed a live page that sent a %d-byte frame (limit %d)", size, settings.LIVE_MAX_FRAME)
            await self._leave()
            await self.close(code=CLOSE_TOO_BIG, reason=f"frame too big: limit {settings.LIVE_MAX_FRAME} bytes")

    async def _leave(self) -> None:
        if self.hub is not None and self.page is not None:
            page, self.page = self.page, None
            await self.hub.leave(page)

    async def _send_frame(self, frame: str) -> None:
        # The hot path: no wrappers. ASGI leaves out the unused "bytes" key (as Channels does, and its test
        # client insists on), which asgiref's TypedDict requires: hence the ignore.
        await self.base_send({"type": "websocket.send", "text": frame})  # type: ignore[arg-type]

    async def _close_page(self, code: int, reason: str) -> None:
        """Close with a reason; a page that reads nothing cannot take the close frame either, so after
        CLOSE_TIMEOUT its connection is aborted (ASGI has no abort: the server's transport, when known)."""
        self.page = None
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.close(code=code, reason=close_reason(reason))
        except TimeoutError:
            transport = getattr(getattr(self.base_send, "__self__", None), "transport", None)
            if transport is None:
                logger.warning("a live page that reads nothing could not be closed within %.0f s", CLOSE_TIMEOUT)
                return
            transport.abort()
        except OSError:
            return  # gone already
