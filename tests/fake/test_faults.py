"""Each fault of the fake exchange, as a client sees it."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from streams.binance.errors import ParseError
from streams.binance.protocol import Trade, parse_frame
from streams.fake.exchange import FakeExchange
from streams.fake.faults import GARBAGE_VARIANTS, FaultRates
from tests.fake import recv_json, wait_until


async def test_drop_closes_the_connection_without_a_close_frame() -> None:
    async with FakeExchange({"BTCUSDT": 0, "ETHUSDT": 0}) as ex:
        async with (
            connect(f"{ex.ws_url}/ws/btcusdt@trade") as btc,
            connect(f"{ex.ws_url}/ws/ethusdt@trade") as eth,
        ):
            await wait_until(lambda: ex.active_connections() == 2)
            assert ex.inject("drop", symbol="BTCUSDT") == 1
            with pytest.raises(ConnectionClosedError) as closed:
                async with asyncio.timeout(2):
                    await btc.recv()
            assert closed.value.rcvd is None  # no close frame
            ex.make_trades("ETHUSDT", 1)
            assert (await recv_json(eth))["e"] == "trade"  # other symbols untouched
        assert ex.stats.disconnects["fault_drop"] == 1


async def test_close_sends_a_close_frame_with_the_code() -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex, connect(f"{ex.ws_url}/ws/btcusdt@trade") as ws:
        await wait_until(lambda: ex.active_connections() == 1)
        ex.inject("close", code=4000, reason="bye")
        async with asyncio.timeout(2):
            await ws.wait_closed()
        assert (ws.close_code, ws.close_reason) == (4000, "bye")


async def test_stall_goes_silent_both_ways_until_it_ends() -> None:
    async with FakeExchange({"BTCUSDT": 0}, ping_interval=0.05) as ex:
        async with connect(f"{ex.ws_url}/ws/btcusdt@trade") as ws:
            await wait_until(lambda: ex.active_connections() == 1)
            ex.inject("stall", duration=0.5)
            made = ex.make_trades("BTCUSDT", 3)
            pong = await ws.ping()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await asyncio.shield(pong)  # no pong while stalled
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await ws.recv()
            async with asyncio.timeout(2):
                await pong  # answered once the stall is over, and the data follows
                assert [(await recv_json(ws))["t"] for _ in made] == [t.trade_id for t in made]
        assert ex.stats.disconnects["pong_timeout"] == 0


async def test_garbage_never_consumes_a_trade_id() -> None:
    async with (
        FakeExchange({"BTCUSDT": 0}, message_limit=50) as ex,
        connect(f"{ex.ws_url}/stream?streams=btcusdt@trade", max_size=None) as ws,
    ):
        await wait_until(lambda: ex.active_connections() == 1)
        before = ex.make_trades("BTCUSDT", 1)
        for _ in GARBAGE_VARIANTS:
            ex.inject("garbage", symbol="BTCUSDT")
        after = ex.make_trades("BTCUSDT", 1)
        trades, errors = [], []
        async with asyncio.timeout(2):
            while len(trades) < 2:
                try:
                    event = parse_frame(await ws.recv())
                except ParseError as exc:
                    errors.append(exc)
                    continue
                trades.append(event)
        assert trades == before + after and len(errors) == len(GARBAGE_VARIANTS)
        assert ex.record("BTCUSDT") == before + after


async def test_shutdown_sends_the_event_then_closes() -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex:
        async with (
            connect(f"{ex.ws_url}/stream?streams=btcusdt@trade") as combined,
            connect(f"{ex.ws_url}/ws/btcusdt@trade") as raw,
        ):
            await wait_until(lambda: ex.active_connections() == 2)
            assert ex.inject("shutdown", grace=0.2) == 2
            wrapped = await recv_json(combined)
            assert wrapped["stream"] == "!serverShutdown" and wrapped["data"]["e"] == "serverShutdown"
            assert set(await recv_json(raw)) == {"e", "E"}
            async with asyncio.timeout(2):
                await combined.wait_closed()
                await raw.wait_closed()
            assert combined.close_code == 1001
        assert ex.stats.disconnects["shutdown"] == 2


async def test_down_closes_everything_and_answers_503_until_it_ends() -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex, httpx.AsyncClient(base_url=ex.rest_url) as http:
        async with connect(f"{ex.ws_url}/ws/btcusdt@trade") as ws:
            await wait_until(lambda: ex.active_connections() == 1)
            ex.inject("down", duration=0.3)
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(2):
                    await ws.recv()
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{ex.ws_url}/ws/btcusdt@trade")
        assert refused.value.response.status_code == 503
        response = await http.get("/api/v3/trades", params={"symbol": "BTCUSDT"})
        assert response.status_code == 503
        await wait_until(lambda: not ex.is_down())
        assert (await http.get("/api/v3/trades", params={"symbol": "BTCUSDT"})).status_code == 200
        async with connect(f"{ex.ws_url}/ws/btcusdt@trade"):
            pass


async def test_random_faults_happen_at_their_rate() -> None:
    async with FakeExchange({"BTCUSDT": 50.0}, faults=FaultRates(drop=5.0)) as ex:
        async with connect(f"{ex.ws_url}/ws/btcusdt@trade") as ws:
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(2):
                    while True:
                        event = parse_frame(await ws.recv())
                        assert isinstance(event, Trade)
        assert ex.stats.faults["drop"] == 1


def test_bad_fault_parameters_are_named() -> None:
    ex = FakeExchange({"BTCUSDT": 0})
    with pytest.raises(ValueError, match="unknown fault kind"):
        ex.inject("explode")
    with pytest.raises(ValueError, match="close code"):
        ex.inject("close", code=999)
    with pytest.raises(ValueError, match="unknown fault parameter"):
        ex.inject("drop", colour="red")
    with pytest.raises(ValueError, match="must be a number"):
        FaultRates(drop=-1)
    assert orjson.loads(orjson.dumps(ex.stats.as_dict()))["faults"] == {}
