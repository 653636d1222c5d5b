"""The broadcast: both groups get each batch as one JSON text; a dead layer never holds ingestion up."""

from __future__ import annotations

import asyncio
import json
import time

from channels_redis.core import RedisChannelLayer
from django.conf import settings

from streams.binance.protocol import TRADE, Trade
from streams.broadcast import ALL_TRADES_GROUP, Broadcaster, symbol_group


def trades(count: int, symbol: str = "BTCUSDT") -> list[Trade]:
    return [Trade(symbol, TRADE, i, "61837.63000000", "0.02000000", 1723161255342 + i, 1723161255343 + i, i % 2 == 0)
            for i in range(1, count + 1)]


async def test_both_groups_receive_each_batch_as_json_text() -> None:
    layer = RedisChannelLayer(hosts=[{"address": settings.REDIS_URL, "socket_timeout": None}])
    everything, btc = await layer.new_channel(), await layer.new_channel()
    await layer.group_add(ALL_TRADES_GROUP, everything)
    await layer.group_add(symbol_group("BTCUSDT"), btc)
    broadcaster = Broadcaster([ALL_TRADES_GROUP], per_symbol=True, layer=layer)
    broadcaster.start()
    try:
        broadcaster.offer(trades(3))
        for channel in (everything, btc):
            async with asyncio.timeout(10):
                message = await layer.receive(channel)
            batch = json.loads(message["trades"])
            assert message["type"] == "trades.batch" and message["count"] == 3
            assert batch[0] == {"ticker_symbol": "BTCUSDT", "channel": "trade", "trade_id": 1,
                                "price": "61837.63000000", "volume": "0.02000000", "trade_ts": 1723161255343,
                                "event_ts": 1723161255344, "is_market_maker": False}
    finally:
        await broadcaster.close()
        await layer.flush()


async def test_a_dead_channel_layer_never_holds_ingestion_up_and_drops_are_counted() -> None:
    dead = RedisChannelLayer(hosts=[{"address": "redis://127.0.0.1:1/0", "socket_timeout": None}])
    broadcaster = Broadcaster([ALL_TRADES_GROUP], layer=dead, queue_size=2, timeout=0.2)
    broadcaster.start()
    for _ in range(50):
        broadcaster.offer(trades(10))  # synchronous: a queue put, never a network call
    deadline = time.monotonic() + 10
    while broadcaster.stats.batches_dropped < 48 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await broadcaster.close()
    assert broadcaster.stats.batches_sent == 0
    assert broadcaster.stats.batches_dropped >= 48 and broadcaster.stats.trades_dropped >= 480
    assert broadcaster.stats.last_error  # and it says why
