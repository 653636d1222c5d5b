"""The browser's WebSocket: stored trades, batch by batch, for every symbol or one (read-only)."""

from __future__ import annotations

import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from streams.binance.errors import InvalidStreamName
from streams.binance.protocol import normalize_symbol
from streams.broadcast import ALL_TRADES_GROUP, symbol_group

logger = logging.getLogger(__name__)

CLOSE_BAD_SYMBOL = 4400


class TradesConsumer(AsyncWebsocketConsumer):
    """`ws/trades/` joins `binance_data`; `ws/trades/<symbol>/` joins `trades.<symbol>`.

    Each batch arrives as one JSON text (encoded once by the broadcaster) and is forwarded as it is. A
    slow browser only fills its own channel: channels-redis drops what does not fit for that channel
    alone, so the others and the streams never wait for it. Anything the browser sends is ignored.
    """

    group: str | None = None

    async def connect(self) -> None:
        symbol = self.scope["url_route"]["kwargs"].get("symbol")
        if symbol is None:
            self.group = ALL_TRADES_GROUP
        else:
            try:
                self.group = symbol_group(normalize_symbol(symbol))
            except InvalidStreamName:
                await self.close(code=CLOSE_BAD_SYMBOL)
                return
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Read-only: what a browser sends is ignored."""

    async def trades_batch(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["trades"])
