"""The hub's channel-layer inbox, read in bulk: every message waiting in one Redis round trip.

channels-redis's own `receive` takes four sequential round trips per message (a clean-up script, BZPOPMIN,
a backup copy, and its removal, which the next receive waits for) so that a cancelled consumer loses
nothing. At 1,000 trades/s handed on a few at a time that is the whole budget of a busy web process, and
the hub does not need it: the broadcast is best effort, and a batch lost in a crash is what the page's
reconnect covers. So the hub pops what waits in its channel's sorted set with ZPOPMIN (up to `limit`), and
blocks with BZPOPMIN only when it is empty. This reads channels-redis's storage layout (4.x: process-local
channels of a layer share the sorted set `<prefix><non-local name>`, members are serialized messages that
name their channels in `__asgi_channel__`): the hub's own layer instance holds no other channel, and the
tests run it against the real layer. Any other layer is read one message at a time through `receive`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels.layers import BaseChannelLayer
from channels_redis.core import RedisChannelLayer

BLOCK_SECONDS = 5  # BZPOPMIN's own timeout (the connection has none: channels_redis#422)


class Inbox:
    """`await inbox.receive_many()`: the messages waiting for `channel`, oldest first (at least one)."""

    def __init__(self, layer: BaseChannelLayer, channel: str, limit: int = 1000, timeout: float = 5.0) -> None:
        self.layer = layer
        self.channel = channel
        self.limit = limit
        # Every command has a deadline (TimeoutError): the layer's connections have no socket timeout, and
        # a Redis that went silent (a partition) would otherwise hold the hub for good.
        self.timeout = timeout
        self._redis = layer if isinstance(layer, RedisChannelLayer) and "!" in channel else None
        self.bulk = self._redis is not None
        if self._redis is not None:
            local = self._redis.non_local_name(channel)
            self._key = self._redis.prefix + local
            self._index = self._redis.consistent_hash(local)

    async def receive_many(self) -> list[dict[str, Any]]:
        if self._redis is None:
            return [await self.layer.receive(self.channel)]
        while True:
            connection = self._redis.connection(self._index)
            async with asyncio.timeout(self.timeout):
                popped = await connection.zpopmin(self._key, self.limit)
            if not popped:
                async with asyncio.timeout(BLOCK_SECONDS + self.timeout):
                    blocked = await connection.bzpopmin(self._key, timeout=BLOCK_SECONDS)
                if blocked is None:
                    continue
                popped = [(blocked[1], blocked[2])]
            messages = [self._decode(self._redis, member) for member, _ in popped]
            return [m for m in messages if m is not None]

    async def receive_waiting(self) -> list[dict[str, Any]]:
        """What waits now, without waiting ([] on a layer that cannot say)."""
        if self._redis is None:
            return []
        async with asyncio.timeout(self.timeout):
            popped = await self._redis.connection(self._index).zpopmin(self._key, self.limit)
        return [m for m in (self._decode(self._redis, member) for member, _ in popped) if m is not None]

    def _decode(self, layer: RedisChannelLayer, member: bytes) -> dict[str, Any] | None:
        message: dict[str, Any] = layer.deserialize(member)
        addressed = message.pop("__asgi_channel__", None)
        if addressed is not None and self.channel not in (addressed if isinstance(addressed, list) else [addressed]):
            return None  # for another channel of this layer instance (the hub's has none)
        return message
