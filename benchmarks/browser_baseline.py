"""The browser side as it was before the live hub, kept to measure against (`benchmark --only browser`).

One channel-layer group member per page (`binance_data` or `trades.<symbol>`), joined on connect and left
on disconnect; nothing else. Served as `benchmarks.browser_baseline:application` by the benchmark only.
"""

from __future__ import annotations

import os
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.asgi import get_asgi_application
from django.urls import re_path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from streams.binance.errors import InvalidStreamName  # noqa: E402 - needs Django set up first
from streams.binance.protocol import normalize_symbol  # noqa: E402
from streams.broadcast import ALL_TRADES_GROUP, symbol_group  # noqa: E402


class GroupPerPageConsumer(AsyncWebsocketConsumer):
    group: str | None = None

    async def connect(self) -> None:
        symbol = self.scope["url_route"]["kwargs"].get("symbol")
        try:
            self.group = ALL_TRADES_GROUP if symbol is None else symbol_group(normalize_symbol(symbol))
        except InvalidStreamName:
            await self.close(code=4400)
            return
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def trades_batch(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["trades"])


application = ProtocolTypeRouter({
    "http": django_asgi_app,
    # Consumers routed with Django's re_path, whose stubs take views only (as in web/routing.py).
    "websocket": AllowedHostsOriginValidator(URLRouter([
        re_path(r"^ws/trades/$", GroupPerPageConsumer.as_asgi()),  # type: ignore[arg-type, list-item]
        re_path(r"^ws/trades/(?P<symbol>[^/]+)/$", GroupPerPageConsumer.as_asgi()),  # type: ignore[arg-type, list-item]
    ])),
})
