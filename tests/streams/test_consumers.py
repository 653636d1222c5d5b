"""The browser's WebSocket on the real channels-redis layer: forwarding, groups, origin, read-only."""

from __future__ import annotations

import json

from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from project.asgi import application
from streams.binance.protocol import TRADE, Trade
from streams.broadcast import ALL_TRADES_GROUP, Broadcaster

ORIGIN = [(b"origin", b"http://localhost")]


def trades(symbol: str, count: int = 2) -> list[Trade]:
    return [Trade(symbol, TRADE, i, "1.50000000", "2.00000000", 1723161255342, 1723161255343, True)
            for i in range(1, count + 1)]


async def broadcast(batch: list[Trade]) -> None:
    broadcaster = Broadcaster([ALL_TRADES_GROUP], per_symbol=True, layer=get_channel_layer())
    broadcaster.start()
    broadcaster.offer(batch)
    await broadcaster.close()


async def test_a_symbol_page_gets_its_symbols_batches_as_json() -> None:
    btc = WebsocketCommunicator(application, "/ws/trades/btcusdt/", headers=ORIGIN)
    everything = WebsocketCommunicator(application, "/ws/trades/", headers=ORIGIN)
    assert (await btc.connect())[0] and (await everything.connect())[0]
    try:
        await btc.send_to(text_data='{"anything": "is ignored"}')
        await broadcast(trades("ETHUSDT"))
        await broadcast(trades("BTCUSDT", 3))
        first = json.loads(await everything.receive_from(timeout=10))
        second = json.loads(await everything.receive_from(timeout=10))
        assert [t["ticker_symbol"] for t in first + second] == ["ETHUSDT"] * 2 + ["BTCUSDT"] * 3
        mine = json.loads(await btc.receive_from(timeout=10))
        assert [t["trade_id"] for t in mine] == [1, 2, 3] and mine[0]["price"] == "1.50000000"
        assert await btc.receive_nothing(timeout=0.3)  # the ETHUSDT batch never reached the BTCUSDT page
    finally:
        await btc.disconnect()
        await everything.disconnect()


async def test_a_foreign_origin_is_refused() -> None:
    intruder = WebsocketCommunicator(application, "/ws/trades/", headers=[(b"origin", b"http://evil.example")])
    connected, _ = await intruder.connect()
    assert not connected


async def test_a_malformed_symbol_is_refused_with_a_code() -> None:
    page = WebsocketCommunicator(application, "/ws/trades/btc-usdt/", headers=ORIGIN)
    connected, code = await page.connect()
    assert not connected and code == 4400
