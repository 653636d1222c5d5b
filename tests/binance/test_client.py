"""The stream client against the fake exchange on real sockets: one test per fault, and completeness."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from streams.binance.backoff import RETRY, Policy
from streams.binance.client import ClientConfig, StreamClient
from streams.binance.errors import UnknownSymbol
from streams.binance.protocol import AGG_TRADE, TRADE, Trade
from streams.binance.rest import BinanceRest
from streams.binance.sequencer import Role
from streams.binance.streamid import stream_id
from streams.binance.supervision import TaskFailed
from streams.fake.exchange import FakeExchange
from streams.fake.proxy import tcp_proxy

BTC = stream_id("BTCUSDT", TRADE)
FAST = {
    "reconnect": Policy(0.05, 0.2, reset_after=5.0),
    "silence_timeout": 0.4, "probe_timeout": 0.4, "open_timeout": 2.0,
}


def identity(trade: Trade) -> tuple[Any, ...]:
    """What must equal the exchange's record (event time differs for trades that came from REST)."""
    return (trade.symbol, trade.channel, trade.trade_id, trade.price_text, trade.quantity_text,
            trade.trade_ts, trade.is_buyer_maker, trade.first_trade_id, trade.last_trade_id)


@asynccontextmanager
async def exchange(**kwargs: Any) -> AsyncIterator[FakeExchange]:
    kwargs.setdefault("symbols", {"BTCUSDT": 0.0})
    kwargs.setdefault("seed", 11)
    async with FakeExchange(**kwargs) as ex:
        yield ex


def client_for(ex: FakeExchange, streams: list[tuple[str, str]] | None = None, **tunables: Any) -> StreamClient:
    resume = tunables.pop("resume", None)
    rest = tunables.pop("rest", None)
    config = ClientConfig.for_streams(ex.ws_url, ex.rest_url, streams or [BTC],
                                      **{**FAST, **tunables})
    return StreamClient(config, resume=resume, rest=rest, rng=random.Random(5))


async def take(client: StreamClient, count: int, timeout: float = 10.0) -> list[Trade]:
    """The next `count` trades, or fail after `timeout` seconds."""
    got: list[Trade] = []
    async with asyncio.timeout(timeout):
        async for trade in client:
            got.append(trade)
            if len(got) == count:
                break
    return got


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def connected(client: StreamClient, ex: FakeExchange, stream: str = "btcusdt@trade") -> None:
    await until(lambda: client.stats.state == "connected" and ex.active_connections(stream) >= 1)


async def test_it_delivers_the_exchanges_trades_in_order() -> None:
    async with exchange() as ex, client_for(ex) as client:
        await connected(client, ex)
        ex.make_trades("BTCUSDT", 50)
        got = await take(client, 50)
        assert [identity(t) for t in got] == [identity(t) for t in ex.record("BTCUSDT")]
        assert client.streams[BTC].gaps_found == 0


async def test_it_carries_several_symbols_on_one_combined_connection() -> None:
    async with exchange(symbols={"BTCUSDT": 0.0, "ETHUSDT": 0.0}) as ex:
        async with client_for(ex, [("BTCUSDT", TRADE), ("ETHUSDT", AGG_TRADE)]) as client:
            await until(lambda: client.stats.state == "connected")
            await until(lambda: ex.active_connections("btcusdt@trade") == 1)
            ex.make_trades("BTCUSDT", 20)
            ex.make_trades("ETHUSDT", 30)
            expected = len(ex.record("BTCUSDT")) + len(ex.agg_record("ETHUSDT"))
            got = await take(client, expected)
        assert [identity(t) for t in got if t.symbol == "BTCUSDT"] == [identity(t) for t in ex.record("BTCUSDT")]
        assert [identity(t) for t in got if t.symbol == "ETHUSDT"] == [
            identity(t) for t in ex.agg_record("ETHUSDT")]


@pytest.mark.parametrize("fault", [{"kind": "drop"}, {"kind": "close", "code": 1011}, {"kind": "stall"}])
async def test_it_reconnects_after_a_fault_and_heals_the_gap_from_rest(fault: dict[str, Any]) -> None:
    async with exchange() as ex, client_for(ex) as client:
        await connected(client, ex)
        ex.make_trades("BTCUSDT", 10)
        await take(client, 10)
        ex.inject(symbol="BTCUSDT", **fault)
        ex.make_trades("BTCUSDT", 25)  # made while the connection is failing: only REST has them
        await until(lambda: client.stats.reconnects >= 1)
        await connected(client, ex)
        ex.make_trades("BTCUSDT", 15)  # arrive live: the jump from the last id shows the gap
        rest = await take(client, 40)
        stream = client.streams[BTC]
        assert [t.trade_id for t in rest] == [t.trade_id for t in ex.record("BTCUSDT")[10:]]
        assert [identity(t) for t in rest] == [identity(t) for t in ex.record("BTCUSDT")[10:]]
        assert stream.gaps_found >= 1 and stream.gaps_healed >= 1 and stream.missed == 0


async def test_a_silent_connection_is_probed_then_dropped() -> None:
    async with exchange() as ex, client_for(ex) as client:
        await connected(client, ex)
        ex.inject("stall", symbol="BTCUSDT")
        await until(lambda: client.stats.reconnects >= 1)
        assert ex.stats.connection_attempts >= 2


async def test_a_quiet_but_alive_connection_is_kept() -> None:
    async with exchange() as ex, client_for(ex, silence_timeout=0.2, probe_timeout=1.0) as client:
        await connected(client, ex)
        opened = client.stats.connected_since
        # No trades for several silence periods: each probe's answer proves the line is alive.
        await until(lambda: client.stats.probes >= 3)
        assert client.stats.reconnects == 0 and client.stats.connected_since == opened


async def test_backoff_grows_and_is_capped_while_the_exchange_is_down() -> None:
    delays: list[float] = []

    async def record_sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    async with exchange() as ex:
        ex.inject("down", duration=None)
        config = ClientConfig.for_streams(ex.ws_url, ex.rest_url, [BTC],
                                          reconnect=Policy(1.0, 16.0))
        client = StreamClient(config, sleep=record_sleep, rng=random.Random(2))
        async with client:
            await until(lambda: len(delays) >= 12)
        bounds = [min(16.0, 2.0**i) for i in range(12)]
        assert all(0 <= d <= b for d, b in zip(delays, bounds, strict=False))
        assert max(delays[6:12]) > 8.0  # reached the cap's range: it grew
        assert max(delays) <= 16.0       # and never passed the cap


@pytest.mark.parametrize("rotate", [True, False])
async def test_the_lifetime_cut_off_costs_no_trade(rotate: bool) -> None:
    # With rotation, make-before-break means not even a gap; without it, the backfill heals the gap.
    async with exchange(symbols={"BTCUSDT": 150.0}, max_lifetime=1.0) as ex:
        async with client_for(ex, rotate_after=0.6 if rotate else 3600.0) as client:
            got = await take(client, 400, timeout=20)
            await until(lambda: len(ex.record("BTCUSDT")) > 0)
        record = {t.trade_id: identity(t) for t in ex.record("BTCUSDT")}
        ids = [t.trade_id for t in got]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert [identity(t) for t in got] == [record[i] for i in ids]
        stream = client.streams[BTC]
        if rotate:
            assert client.stats.rotations >= 1 and stream.gaps_found == 0
        else:
            assert client.stats.reconnects >= 1


async def test_a_server_shutdown_notice_rotates_without_a_gap() -> None:
    async with exchange(symbols={"BTCUSDT": 100.0}) as ex, client_for(ex) as client:
        await take(client, 20)
        ex.inject("shutdown", grace=1.0)
        await until(lambda: client.stats.rotations >= 1)
        got = await take(client, 50)
        ids = [t.trade_id for t in got]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert client.streams[BTC].gaps_found == 0


async def test_rest_429_is_waited_out() -> None:
    waits: list[float] = []

    async def record_sleep(seconds: float) -> None:
        waits.append(seconds)

    async with exchange() as ex:
        ex.make_trades("BTCUSDT", 30)
        ex.inject("rest_429", count=1)
        rest = BinanceRest(ex.rest_url, sleep=record_sleep)
        resume = {BTC: ex.record("BTCUSDT")[4].trade_id}
        async with client_for(ex, resume=resume, rest=rest) as client:
            got = await take(client, 25)
        await rest.aclose()
        assert [identity(t) for t in got] == [identity(t) for t in ex.record("BTCUSDT")[5:]]
        assert waits and waits[0] == pytest.approx(1.0)
        assert rest.stats.retries >= 1


async def test_resume_backfills_what_was_made_while_stopped() -> None:
    async with exchange() as ex:
        ex.make_trades("BTCUSDT", 2500)  # three REST pages
        last_stored = ex.record("BTCUSDT")[99].trade_id
        async with client_for(ex, resume={BTC: last_stored}) as client:
            await connected(client, ex)
            ex.make_trades("BTCUSDT", 10)
            got = await take(client, 2410)
        assert [identity(t) for t in got] == [identity(t) for t in ex.record("BTCUSDT")[100:]]


async def test_resume_is_bounded_by_the_backfill_window() -> None:
    async with exchange() as ex:
        ex.make_trades("BTCUSDT", 300)
        last_stored = ex.record("BTCUSDT")[0].trade_id
        resume = {BTC: last_stored}
        async with client_for(ex, resume=resume, backfill_max_trades=50) as client:
            got = await take(client, 50)
            stream = client.streams[BTC]
        assert [t.trade_id for t in got] == [t.trade_id for t in ex.record("BTCUSDT")[250:]]
        assert stream.missed == 249 and stream.unhealed[0].size == 249


async def test_a_resume_point_from_another_exchange_is_refused_not_obeyed() -> None:
    async with exchange() as ex:
        ex.make_trades("BTCUSDT", 5)
        ahead = ex.record("BTCUSDT")[-1].trade_id + 10**9  # ids that this exchange never made
        async with client_for(ex, resume={BTC: ahead}) as client:
            await until(lambda: client.streams[BTC].resume_rejected)
            await connected(client, ex)
            ex.make_trades("BTCUSDT", 10)
            got = await take(client, 10)
        assert [identity(t) for t in got] == [identity(t) for t in ex.record("BTCUSDT")[5:]]


async def test_garbage_is_counted_and_skipped_and_no_trade_is_lost() -> None:
    async with exchange() as ex, client_for(ex) as client:
        await connected(client, ex)
        for _ in range(7):
            ex.make_trades("BTCUSDT", 3)
            ex.inject("garbage", symbol="BTCUSDT")
        ex.make_trades("BTCUSDT", 3)
        got = await take(client, 24)
        assert [identity(t) for t in got] == [identity(t) for t in ex.record("BTCUSDT")]
        await until(lambda: client.stats.parse_errors >= 5)
        assert client.stats.dead_letters


async def test_live_subscribe_adds_a_stream_to_the_open_connection() -> None:
    async with exchange(symbols={"BTCUSDT": 0.0, "ETHUSDT": 0.0}) as ex, client_for(ex) as client:
        await connected(client, ex)
        await client.subscribe(stream_id("ethusdt", "trade"))
        ex.make_trades("ETHUSDT", 5)
        got = await take(client, 5)
        assert [identity(t) for t in got] == [identity(t) for t in ex.record("ETHUSDT")]
        assert client.stats.reconnects == 0


async def test_an_unknown_symbol_is_a_clear_error() -> None:
    async with exchange() as ex, BinanceRest(ex.rest_url) as rest:
        with pytest.raises(UnknownSymbol, match="NOSUCHCOIN"):
            await rest.symbol_info("nosuchcoin")
        info = await rest.symbol_info("btcusdt")
        assert info["symbol"] == "BTCUSDT"


# --- No silent failure -----------------------------------------------------------------------------------

async def fast_sleep(seconds: float) -> None:
    """REST retries without the wait: the schedule is the one under test elsewhere."""
    await asyncio.sleep(0)


async def test_a_rest_answer_that_is_not_json_is_retried_like_a_5xx_and_the_gap_is_healed() -> None:
    # A proxy's error page with status 200 killed the backfill with a ValueError on today's main: the
    # stream then held its live trades for ever and handed on nothing.
    async with exchange() as ex:
        rest = BinanceRest(ex.rest_url, sleep=fast_sleep)
        async with client_for(ex, rest=rest) as client:
            await connected(client, ex)
            ex.make_trades("BTCUSDT", 5)
            await take(client, 5)
            ex.inject("drop", symbol="BTCUSDT")
            ex.make_trades("BTCUSDT", 20)  # only REST has these
            ex.inject("rest_garbage", count=2)
            await until(lambda: client.stats.reconnects >= 1)
            await connected(client, ex)
            ex.make_trades("BTCUSDT", 5)
            got = await take(client, 25)
        await rest.aclose()
        assert [identity(t) for t in got] == [identity(t) for t in ex.record("BTCUSDT")[5:]]
        assert rest.stats.retries >= 2 and ex.stats.rest_garbage == 2


async def test_a_rest_that_never_answers_json_gives_the_gap_up_loudly_and_the_stream_goes_on() -> None:
    async with exchange() as ex:
        rest = BinanceRest(ex.rest_url, sleep=fast_sleep, retry=dataclasses.replace(RETRY["rest request"], attempts=2))
        async with client_for(ex, rest=rest) as client:
            await connected(client, ex)
            ex.make_trades("BTCUSDT", 5)
            await take(client, 5)
            ex.inject("drop", symbol="BTCUSDT")
            ex.make_trades("BTCUSDT", 20)
            ex.inject("rest_garbage", count=1000)
            await until(lambda: client.stats.reconnects >= 1)
            await connected(client, ex)
            ex.make_trades("BTCUSDT", 5)
            got = await take(client, 5)  # the live trades after the gap are not held for ever
            stream = client.streams[BTC]
        await rest.aclose()
        assert [identity(t) for t in got] == [identity(t) for t in ex.record("BTCUSDT")[25:]]
        assert stream.missed == 20 and not stream.backfilling and client.stuck_for(BTC) == 0


async def test_an_unexpected_error_in_a_background_task_ends_the_client_loudly(
        caplog: pytest.LogCaptureFixture) -> None:
    # Today's main: an exception other than StreamError in a backfill ended that task in silence, and the
    # stream kept its connection, reading and holding trades, handing on nothing, saying "connected".
    class BrokenRest(BinanceRest):
        async def trades_page(self, *args: Any, **kwargs: Any) -> list[Trade]:
            raise RuntimeError("a bug nobody foresaw")

    async with exchange() as ex:
        rest = BrokenRest(ex.rest_url)
        async with client_for(ex, rest=rest) as client:
            await connected(client, ex)
            ex.make_trades("BTCUSDT", 3)
            await take(client, 3)
            ex.inject("drop", symbol="BTCUSDT")
            ex.make_trades("BTCUSDT", 5)
            await until(lambda: client.stats.reconnects >= 1)
            ex.make_trades("BTCUSDT", 2)
            with pytest.raises(TaskFailed, match="a bug nobody foresaw"):
                await take(client, 1)
            await until(lambda: ex.active_connections("btcusdt@trade") == 0)  # nothing is left half alive
        await rest.aclose()
    failures = [r for r in caplog.records if "failed; stopping the stream" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None  # logged once, with its traceback
    assert client.stats.task_failures == 1 and client.stats.state == "failed"


async def test_a_stop_is_bounded_when_the_exchange_stops_answering() -> None:
    # An exchange that goes away without a word (no FIN, no RST: packets vanish) must not hold a stop
    # up: close handshakes, reconnect handshakes and REST calls all hang against it.
    async with exchange() as ex:
        host, port = ex.ws_url.removeprefix("ws://").split(":")
        with tcp_proxy(host, int(port)) as ws_proxy:
            config = ClientConfig.for_streams(f"ws://127.0.0.1:{ws_proxy.port}", ex.rest_url, [BTC],
                                              **{**FAST, "open_timeout": 30.0, "stop_timeout": 1.0})
            client = StreamClient(config, rng=random.Random(5))
            client.start()
            await connected(client, ex)
            ws_proxy.freeze()
            await until(lambda: client.stats.connection_attempts >= 2 and client.stats.state == "connecting")
            started = time.monotonic()
            await asyncio.wait_for(client.stop(), timeout=10)  # the hung handshake would take 30 s
            assert time.monotonic() - started < 5
            assert client.stats.state == "stopped"


async def test_poison_values_are_parse_errors_and_never_handed_on() -> None:
    async with exchange() as ex, client_for(ex) as client:
        await connected(client, ex)
        for variant in ("id_overflow", "price_overflow", "precision"):
            ex.make_trades("BTCUSDT", 2)
            ex.inject("garbage", symbol="BTCUSDT", variant=variant)
        ex.make_trades("BTCUSDT", 2)
        got = await take(client, 8)
        await until(lambda: client.stats.parse_errors == 3)
        assert [identity(t) for t in got] == [identity(t) for t in ex.record("BTCUSDT")]
        reasons = [reason for _, reason, _ in client.stats.dead_letters]
        assert any("2**63" in r for r in reasons) and sum("numeric(28,8)" in r for r in reasons) == 2


async def test_ids_that_go_back_are_counted_kept_for_the_audit_and_not_handed_on_twice(
        caplog: pytest.LogCaptureFixture) -> None:
    # Today's main dropped them in silence: no count, no log line, nothing for the audit.
    async with exchange() as ex, client_for(ex) as client:
        await connected(client, ex)
        ex.make_trades("BTCUSDT", 30)
        await take(client, 30)
        ex.inject("replay", symbol="BTCUSDT", count=12)
        ex.make_trades("BTCUSDT", 3)
        got = await take(client, 3)
        stream = client.streams[BTC]
        assert [identity(t) for t in got] == [identity(t) for t in ex.record("BTCUSDT")[30:]]
        assert stream.ids_back == 12 and stream.duplicates == 0
        assert [t.trade_id for t in stream.regressions] == [t.trade_id for t in ex.record("BTCUSDT")[18:30]]
    went_back = [r for r in caplog.records if "trade id went back" in r.getMessage()]
    assert len(went_back) == 1  # the first of the run, not one line per trade


def test_the_lag_is_never_negative_when_the_clocks_disagree_by_a_millisecond() -> None:
    # Seen as "lag -1 ms" on the status page: this host's clock a little behind the exchange's.
    client = StreamClient(ClientConfig.for_streams("ws://127.0.0.1:9", "http://127.0.0.1:9", [BTC]))
    stream = client.streams[BTC]
    event_ms = 1_700_000_000_123
    for received_us, event_ts, lag in [(event_ms * 1000 - 800, event_ms, 0),             # 0.8 ms "before" it
                                       (event_ms * 1000 + 2_500, event_ms, 2),           # 2.5 ms after
                                       (event_ms * 1000 - 5, event_ms * 1000 + 400, 0)]:  # µs event times
        trade = Trade("BTCUSDT", TRADE, 1, "1.0", "1.0", event_ts, event_ts, False, received_us=received_us)
        client.on_trade(None, Role.PRIMARY, trade)  # type: ignore[arg-type]  # the slot is not looked at
        assert stream.lag_ms == lag
