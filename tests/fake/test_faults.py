"""Each fault of the fake exchange, as a client sees it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from streams.binance.errors import ParseError
from streams.binance.protocol import Reply, ServerShutdown, Trade, parse_frame
from streams.fake.exchange import FakeExchange
from streams.fake.faults import (
    GARBAGE_VARIANTS,
    MALFORMED_VARIANTS,
    OVERFLOW_ID,
    POISON_ID_OFFSET,
    POISON_VARIANTS,
    FaultRates,
)
from tests.fake import recv_json, wait_until

TRADE_FIELDS = {"e": str, "E": int, "s": str, "t": int, "p": str, "q": str, "T": int, "m": bool, "M": bool}
AGG_FIELDS = {**{k: v for k, v in TRADE_FIELDS.items() if k != "t"}, "a": int, "f": int, "l": int}


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
        for variant in MALFORMED_VARIANTS:
            ex.inject("garbage", symbol="BTCUSDT", variant=variant)
        after = ex.make_trades("BTCUSDT", 1)
        trades: list[Trade | Reply | ServerShutdown] = []
        errors: list[ParseError] = []
        async with asyncio.timeout(2):
            while len(trades) < 2:
                try:
                    event = parse_frame(await ws.recv())
                except ParseError as exc:
                    errors.append(exc)
                    continue
                trades.append(event)
        assert trades == before + after and len(errors) == len(MALFORMED_VARIANTS)
        assert ex.record("BTCUSDT") == before + after


def _types(data: dict[str, Any]) -> dict[str, type]:
    return {key: type(value) for key, value in data.items()}


async def test_poison_frames_are_well_formed_trades_with_one_value_storage_cannot_hold() -> None:
    async with (
        FakeExchange({"BTCUSDT": 0}) as ex,
        connect(f"{ex.ws_url}/stream?streams=btcusdt@trade") as combined,
        connect(f"{ex.ws_url}/ws/btcusdt@trade?timeUnit=MICROSECOND") as raw,
        connect(f"{ex.ws_url}/ws/btcusdt@aggTrade") as agg,
    ):
        await wait_until(lambda: ex.active_connections() == 3)
        made = ex.make_trades("BTCUSDT", 3)
        aggs = ex.agg_record("BTCUSDT")
        for variant in POISON_VARIANTS:
            assert ex.inject("garbage", symbol="BTCUSDT", variant=variant) == 3
        assert ex.record("BTCUSDT") == made and ex.agg_record("BTCUSDT") == aggs  # nothing recorded
        got = [await recv_json(combined) for _ in range(len(made) + len(POISON_VARIANTS))][len(made) :]
        assert {m["stream"] for m in got} == {"btcusdt@trade"}
        overflow, price, precision = (m["data"] for m in got)
        for data in (overflow, price, precision):
            assert _types(data) == TRADE_FIELDS and (data["e"], data["s"]) == ("trade", "BTCUSDT")
        next_id = made[-1].trade_id + 1
        assert overflow["t"] == OVERFLOW_ID == 2**63 and overflow["p"] == made[-1].price_text
        assert price["t"] == next_id + POISON_ID_OFFSET and price["p"] == "100000000000000000000.00000000"
        assert len(price["p"].split(".")[0]) == 21
        assert precision["t"] == next_id + POISON_ID_OFFSET and precision["q"] == "0.123456789"
        assert len(overflow["q"].split(".")[1]) == len(price["q"].split(".")[1]) == 8
        raws = [await recv_json(raw) for _ in range(len(made) + len(POISON_VARIANTS))][len(made) :]
        values = [(m["t"], m["p"], m["q"]) for m in (overflow, price, precision)]
        assert [(m["t"], m["p"], m["q"]) for m in raws] == values  # the same poison on a raw connection
        assert all(m["E"] > 10**15 and m["T"] > 10**15 for m in raws)  # in the connection's time unit
        agg_got = [await recv_json(agg) for _ in range(len(aggs) + len(POISON_VARIANTS))][len(aggs) :]
        next_agg = aggs[-1].trade_id + 1
        for data in agg_got:
            assert _types(data) == AGG_FIELDS and data["e"] == "aggTrade"
            assert data["f"] == data["l"] == next_agg + POISON_ID_OFFSET
        assert [m["a"] for m in agg_got] == [OVERFLOW_ID] + [next_agg + POISON_ID_OFFSET] * 2
        assert agg_got[1]["p"] == "100000000000000000000.00000000" and agg_got[2]["q"] == "0.123456789"
        assert ex.stats.faults["garbage"] == 3 * len(POISON_VARIANTS)


async def test_garbage_without_a_variant_takes_each_in_turn_and_never_a_real_trade_id() -> None:
    async with (
        FakeExchange({"BTCUSDT": 0}) as ex,
        connect(f"{ex.ws_url}/stream?streams=btcusdt@trade", max_size=None) as ws,
    ):
        await wait_until(lambda: ex.active_connections() == 1)
        before = ex.make_trades("BTCUSDT", 5)
        for _ in range(2 * len(GARBAGE_VARIANTS)):
            ex.inject("garbage")
        after = ex.make_trades("BTCUSDT", 5)
        frames: list[str | bytes] = []
        async with asyncio.timeout(5):
            while len(frames) < len(before) + 2 * len(GARBAGE_VARIANTS) + len(after):
                frames.append(await ws.recv())
        real = {t.trade_id for t in ex.record("BTCUSDT")}
        assert [parse_frame(f) for f in frames[: len(before)] + frames[-len(after) :]] == before + after
        garbage = frames[len(before) : -len(after)]
        ids = [_trade_id(frame) for frame in garbage]
        assert not real & {i for i in ids if i is not None}
        poison = [i for i in ids if i is not None]  # the malformed frames carry no integer id
        next_id = before[-1].trade_id + 1
        assert poison == [OVERFLOW_ID, next_id + POISON_ID_OFFSET, next_id + POISON_ID_OFFSET] * 2
        assert ex.stats.faults["garbage"] == 2 * len(GARBAGE_VARIANTS)


def _trade_id(frame: str | bytes) -> int | None:
    """The integer trade id a frame carries, if it is a JSON trade event with one."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    data = message.get("data") if isinstance(message, dict) else None
    trade_id = data.get("t") if isinstance(data, dict) else None
    return trade_id if type(trade_id) is int else None


async def test_replay_sends_the_last_trades_again_as_first_sent_and_records_nothing() -> None:
    async with FakeExchange({"BTCUSDT": 0, "ETHUSDT": 0}) as ex:
        async with (
            connect(f"{ex.ws_url}/stream?streams=btcusdt@trade/btcusdt@aggTrade") as combined,
            connect(f"{ex.ws_url}/ws/btcusdt@trade") as raw,
            connect(f"{ex.ws_url}/ws/ethusdt@trade") as eth,
            asyncio.timeout(5),
        ):
            await wait_until(lambda: ex.active_connections() == 3)
            made = ex.make_trades("BTCUSDT", 30)
            aggs = ex.agg_record("BTCUSDT")
            first = [await combined.recv() for _ in range(len(made) + len(aggs))]
            first_raw = [await raw.recv() for _ in made]
            assert ex.inject("replay", symbol="BTCUSDT", count=5) == 2
            again = [await combined.recv() for _ in range(5 + min(5, len(aggs)))]
            trades_first = [f for f in first if orjson.loads(f)["stream"] == "btcusdt@trade"]
            aggs_first = [f for f in first if orjson.loads(f)["stream"] == "btcusdt@aggTrade"]
            assert again == trades_first[-5:] + aggs_first[-5:]  # byte for byte, ids going back
            assert [parse_frame(f) for f in again[:5]] == made[-5:]
            assert ex.inject("replay", symbol="btcusdt") == 2  # default count: 20
            again = [await combined.recv() for _ in range(20 + min(20, len(aggs)))]
            assert again == trades_first[-20:] + aggs_first[-20:]
            again_raw = [await raw.recv() for _ in range(5 + 20)]
            assert again_raw == first_raw[-5:] + first_raw[-20:]
            assert ex.record("BTCUSDT") == made and ex.agg_record("BTCUSDT") == aggs
            (eth_trade,) = ex.make_trades("ETHUSDT", 1)
            assert (await recv_json(eth))["t"] == eth_trade.trade_id  # other symbols untouched
        stats = ex.stats
        assert stats.faults["replay"] == 4
        assert stats.replayed == (5 + min(5, len(aggs)) + 5) + (20 + min(20, len(aggs)) + 20)


async def test_random_replays_happen_at_their_rate() -> None:
    async with FakeExchange({"BTCUSDT": 0}, faults=FaultRates(replay=5.0)) as ex:
        # max_queue=None: the client reads on while closing, whatever the replays queued meanwhile.
        async with connect(f"{ex.ws_url}/ws/btcusdt@trade", max_queue=None) as ws, asyncio.timeout(5):
            await wait_until(lambda: ex.active_connections() == 1)
            made = ex.make_trades("BTCUSDT", 30)
            assert [parse_frame(await ws.recv()) for _ in made] == made
            assert [parse_frame(await ws.recv()) for _ in range(20)] == made[-20:]  # then the last 20 again
        assert ex.stats.faults["replay"] >= 1 and ex.record("BTCUSDT") == made


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
    with pytest.raises(ValueError, match="fault rate replay"):
        FaultRates(replay=-1)
    with pytest.raises(ValueError, match="fault rate rest_garbage"):
        FaultRates(rest_garbage="often")  # type: ignore[arg-type]  # the wrong type on purpose
    with pytest.raises(ValueError, match="count 0 must be"):
        ex.inject("replay", symbol="BTCUSDT", count=0)
    with pytest.raises(ValueError, match="count '3' must be"):
        ex.inject("rest_garbage", count="3")
    with pytest.raises(ValueError, match="unknown garbage variant 'overflow'"):
        ex.inject("garbage", variant="overflow")
    assert orjson.loads(orjson.dumps(ex.stats.as_dict()))["faults"] == {}
