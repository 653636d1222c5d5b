"""The fake exchange's WebSocket side: payloads, live methods, refusals and per-connection limits."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from streams.binance.protocol import Trade, parse_frame
from streams.fake.exchange import FakeExchange
from tests.fake import recv_json, recv_reply, wait_until


async def test_raw_and_combined_payloads_match_the_record() -> None:
    async with FakeExchange({"BTCUSDT": 0, "ETHUSDT": 0}, seed=1) as ex:  # noqa: SIM117 - readability
        async with (
            connect(f"{ex.ws_url}/ws/btcusdt@trade") as raw,
            connect(f"{ex.ws_url}/stream?streams=btcusdt@trade/btcusdt@aggTrade") as combined,
        ):
            await wait_until(lambda: ex.active_connections("btcusdt@trade") == 2)
            ex.make_trades("ETHUSDT", 3)  # not subscribed: nothing arrives for it
            made = ex.make_trades("BTCUSDT", 40)
            got_raw = [await recv_json(raw) for _ in made]
            assert got_raw[0] == {
                "e": "trade",
                "E": made[0].event_ts,
                "s": "BTCUSDT",
                "t": made[0].trade_id,
                "p": made[0].price_text,
                "q": made[0].quantity_text,
                "T": made[0].trade_ts,
                "m": made[0].is_buyer_maker,
                "M": True,
            }
            assert [parse_frame(orjson.dumps(m).decode()) for m in got_raw] == ex.record("BTCUSDT")
            aggs = ex.agg_record("BTCUSDT")
            got = [await recv_json(combined) for _ in range(len(made) + len(aggs))]
            assert {m["stream"] for m in got} == {"btcusdt@trade", "btcusdt@aggTrade"}
            events = [parse_frame(orjson.dumps(m).decode()) for m in got]
            assert [e for e in events if isinstance(e, Trade) and e.channel == "trade"] == made
            assert [e for e in events if isinstance(e, Trade) and e.channel == "aggTrade"] == aggs
            assert set(aggs[0]._asdict()) >= {"first_trade_id", "last_trade_id"}
            assert "a" in got[-1]["data"] and "f" in got[-1]["data"] and "l" in got[-1]["data"]


async def test_the_market_trades_on_its_own_at_the_configured_rate() -> None:
    async with FakeExchange({"BTCUSDT": 200.0}, seed=1) as ex:
        async with connect(f"{ex.ws_url}/ws/btcusdt@trade") as ws:
            first = await recv_json(ws)
            second = await recv_json(ws)
            assert second["t"] == first["t"] + 1
        await wait_until(lambda: len(ex.record("BTCUSDT")) >= 40)


async def test_microsecond_time_unit_gives_microsecond_timestamps() -> None:
    async with (
        FakeExchange({"BTCUSDT": 0}) as ex,
        connect(f"{ex.ws_url}/ws/btcusdt@trade?timeUnit=MICROSECOND") as ws,
    ):
        await wait_until(lambda: ex.active_connections("btcusdt@trade") == 1)
        (trade,) = ex.make_trades("BTCUSDT", 1)
        message = await recv_json(ws)
        assert message["T"] // 1000 == trade.trade_ts and message["T"] > 10**15
        assert message["E"] // 1000 == trade.event_ts


async def test_live_subscribe_unsubscribe_list_and_properties() -> None:
    async with FakeExchange({"BTCUSDT": 0, "ETHUSDT": 0}, message_limit=10) as ex:
        async with connect(f"{ex.ws_url}/ws") as ws:
            await ws.send('{"method":"SUBSCRIBE","params":["btcusdt@aggTrade","ethusdt@trade"],"id":1}')
            assert await recv_reply(ws) == {"result": None, "id": 1}
            await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":3}')
            assert await recv_reply(ws) == {"result": ["btcusdt@aggTrade", "ethusdt@trade"], "id": 3}
            await ws.send('{"method":"UNSUBSCRIBE","params":["btcusdt@aggTrade"],"id":312}')
            assert await recv_reply(ws) == {"result": None, "id": 312}
            await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":"abc"}')
            assert await recv_reply(ws) == {"result": ["ethusdt@trade"], "id": "abc"}
            await ws.send('{"method":"GET_PROPERTY","params":["combined"],"id":2}')
            assert await recv_reply(ws) == {"result": False, "id": 2}
            await ws.send('{"method":"SET_PROPERTY","params":["combined",true],"id":5}')
            assert await recv_reply(ws) == {"result": None, "id": 5}
            (trade,) = ex.make_trades("ETHUSDT", 1)
            message = await recv_json(ws)
            assert message["stream"] == "ethusdt@trade" and message["data"]["t"] == trade.trade_id
        assert ex.stats.connections_opened["ethusdt@trade"] == 1


@pytest.mark.parametrize(
    ("request_text", "code", "message_start", "reply_id"),
    [
        ('{"method":"SUBSCRIBE","params":["BTCUSDT@trade"],"id":2}', 2, "Invalid request: invalid stream", 2),
        ('{"method":"SUBSCRIBE","params":["btcusdt@depth"],"id":2}', 2, "Invalid request: invalid stream", 2),
        ('{"method":"SUBSCRIB","params":[],"id":4}', 2, "Invalid request: unknown variant `SUBSCRIB`", 4),
        ('{"params":[],"id":4}', 2, "Invalid request: missing field `method`", None),
        (
            '{"method":"LIST_SUBSCRIPTIONS","id":-1}',
            2,
            "Invalid request: request ID must be an unsigned",
            None,
        ),
        (
            '{"method":"LIST_SUBSCRIPTIONS","id":true}',
            2,
            "Invalid request: request ID must be an unsigned",
            None,
        ),
        ('{"method":"LIST_SUBSCRIPTIONS","id":"' + "a" * 37 + '"}', 2, "Invalid request: request ID", None),
        ('{"method":"LIST_SUBSCRIPTIONS"}', 2, "Invalid request: request ID must be an unsigned", None),
        (
            '{"method":"LIST_SUBSCRIPTIONS","params":["x"],"id":6}',
            2,
            "Invalid request: too many parameters",
            6,
        ),
        (
            '{"method":"SET_PROPERTY","params":["combined","yes"],"id":7}',
            1,
            "Invalid value type: expected Boolean",
            7,
        ),
        ('{"method":"SET_PROPERTY","params":["compressed",true],"id":8}', 0, "Unknown property", 8),
        (
            '{"method":"GET_PROPERTY","params":[1],"id":9}',
            2,
            "Invalid request: property name must be a string",
            9,
        ),
        (
            '{"method":"SET_PROPERTY","params":["combined",true,1],"id":9}',
            2,
            "Invalid request: too many param",
            9,
        ),
        ('{"method": SUBSCRIBE}', 3, "Invalid JSON: expected value at line 1 column", None),
    ],
)
async def test_bad_requests_get_the_spec_error_replies(
    request_text: str, code: int, message_start: str, reply_id: object
) -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex, connect(f"{ex.ws_url}/ws") as ws:
        await ws.send(request_text)
        reply = await recv_reply(ws)
        assert reply["error"]["code"] == code
        assert reply["error"]["msg"].startswith(message_start)
        assert reply["id"] == reply_id
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":1}')  # the connection is still usable
        assert await recv_reply(ws) == {"result": [], "id": 1}


@pytest.mark.parametrize(
    "path",
    [
        "/ws/BTCUSDT@trade",
        "/ws/btcusdt@depth",
        "/stream?streams=btcusdt@trade/btcusdt@kline_1m",
        "/nowhere",
        "/ws/btcusdt@trade?timeUnit=NANOSECOND",
    ],
)
async def test_an_invalid_stream_or_path_is_refused_at_the_handshake(path: str) -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{ex.ws_url}{path}")
        assert refused.value.response.status_code in (400, 404)
        assert "msg" in orjson.loads(refused.value.response.body)
        assert ex.stats.refused_connections == 1


async def test_a_well_formed_stream_of_an_unlisted_symbol_is_accepted_and_silent() -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex, connect(f"{ex.ws_url}/ws/xrpusdt@trade") as ws:
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":1}')
        assert await recv_reply(ws) == {"result": ["xrpusdt@trade"], "id": 1}


async def test_more_than_1024_streams_are_refused() -> None:
    streams = "/".join(f"s{i:04d}usdt@trade" for i in range(1025))
    async with FakeExchange({"BTCUSDT": 0}) as ex:
        with pytest.raises(InvalidStatus):
            await connect(f"{ex.ws_url}/stream?streams={streams}")
        async with connect(f"{ex.ws_url}/ws") as ws:
            params = [f"s{i:04d}usdt@trade" for i in range(1025)]
            await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": params, "id": 1}).decode())
            assert (await recv_reply(ws))["error"]["code"] == 2


async def test_too_many_messages_in_a_second_disconnect_with_1008() -> None:
    async with FakeExchange({"BTCUSDT": 0}, message_limit=5) as ex, connect(f"{ex.ws_url}/ws") as ws:
        for i in range(6):
            await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}).decode())
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(2):
                while True:
                    await ws.recv()
        assert ws.close_code == 1008
        assert ex.stats.disconnects["message_limit"] == 1


async def test_client_pings_count_against_the_message_limit() -> None:
    async with FakeExchange({"BTCUSDT": 0}, message_limit=3) as ex, connect(f"{ex.ws_url}/ws") as ws:
        for _ in range(4):
            await ws.ping()
        await wait_until(lambda: ex.stats.disconnects["message_limit"] == 1)
        await ws.wait_closed()
        assert ws.close_code == 1008


async def test_connection_attempts_over_the_limit_are_refused_with_429() -> None:
    async with FakeExchange({"BTCUSDT": 0}, connection_limit=3, connection_window=60) as ex:
        for _ in range(3):
            async with connect(f"{ex.ws_url}/ws/btcusdt@trade"):
                pass
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{ex.ws_url}/ws/btcusdt@trade")
        assert refused.value.response.status_code == 429
        assert int(refused.value.response.headers["Retry-After"]) >= 1
        assert ex.stats.connections_refused["connection_limit"] == 1
        assert ex.stats.connection_attempts == 4


async def test_every_connection_is_closed_at_its_lifetime() -> None:
    async with (
        FakeExchange({"BTCUSDT": 0}, max_lifetime=0.3) as ex,
        connect(f"{ex.ws_url}/ws/btcusdt@trade") as ws,
    ):
        async with asyncio.timeout(2):
            await ws.wait_closed()
        assert ws.close_code == 1000
        assert ex.stats.disconnects["lifetime"] == 1


class PingCountingConnection(ClientConnection):
    """A client connection that counts the server's pings (it answers them automatically)."""

    pings = 0

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings += 1
        super().process_event(event)


async def test_server_pings_and_drops_a_client_that_does_not_pong() -> None:
    async with FakeExchange({"BTCUSDT": 0}, ping_interval=0.05, pong_timeout=0.3) as ex:
        async with connect(
            f"{ex.ws_url}/ws/btcusdt@trade",
            ping_interval=None,
            close_timeout=0.1,
            create_connection=PingCountingConnection,
        ) as ws:
            assert isinstance(ws, PingCountingConnection)
            await wait_until(lambda: ws.pings >= 10)  # answered for longer than pong_timeout: still open
            assert ex.stats.disconnects["pong_timeout"] == 0
            assert ex.stats.messages_received == 0  # solicited pongs are not counted as messages
            ws.transport.pause_reading()  # now the client stops reading: no pongs any more
            await wait_until(lambda: ex.stats.disconnects["pong_timeout"] == 1)
        await wait_until(lambda: ex.active_connections() == 0)


async def test_burst_delivers_every_trade_in_order() -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex:
        async with (
            connect(f"{ex.ws_url}/ws/btcusdt@trade", max_size=None) as ws,
            connect(f"{ex.ws_url}/stream?streams=btcusdt@aggTrade") as agg_ws,
        ):
            await wait_until(lambda: ex.active_connections() == 2)
            made = ex.burst("BTCUSDT", 20_000)
            after = ex.make_trades("BTCUSDT", 2)  # live trades queue behind the burst
            got: list[Trade] = []
            async with asyncio.timeout(10):
                while len(got) < len(made) + 2:
                    event = parse_frame(await ws.recv())
                    assert isinstance(event, Trade)
                    got.append(event)
            assert got == made + after
            aggs = ex.agg_record("BTCUSDT")
            last = None
            async with asyncio.timeout(10):
                while last != aggs[-1]:
                    last = parse_frame(await agg_ws.recv())
        assert ex.stats.messages_sent >= len(made) + len(aggs)
