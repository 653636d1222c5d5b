"""The fake market: deterministic, well-formed trades and a consistent aggregate record."""

from __future__ import annotations

import itertools
import re
from decimal import Decimal

import pytest

from streams.binance.protocol import AGG_TRADE, TRADE, Trade
from streams.fake.exchange import FakeExchange
from streams.fake.market import Market

RECORDING = "/work/shared/data/binance-recorded/hftbacktest_spot_trades_20240808.txt.gz"


def test_two_exchanges_with_the_same_seed_make_the_same_trades() -> None:
    one = FakeExchange({"BTCUSDT": 0, "ETHUSDT": 0}, seed=7)
    two = FakeExchange({"BTCUSDT": 0, "ETHUSDT": 0}, seed=7)
    a = one.make_trades("BTCUSDT", 30) + one.make_trades("BTCUSDT", 70)
    b = two.make_trades("BTCUSDT", 100)

    def key(t: Trade) -> tuple[int, str, str, bool]:
        return (t.trade_id, t.price_text, t.quantity_text, t.is_buyer_maker)

    assert [key(t) for t in a] == [key(t) for t in b]
    assert [key(t) for t in one.make_trades("ETHUSDT", 5)] == [key(t) for t in two.make_trades("ETHUSDT", 5)]
    other = FakeExchange({"BTCUSDT": 0}, seed=8).make_trades("BTCUSDT", 100)
    assert [key(t) for t in other] != [key(t) for t in a]


def test_trades_are_consecutive_well_formed_and_recorded() -> None:
    ex = FakeExchange({"BTCUSDT": 0}, seed=1)
    trades = ex.make_trades("BTCUSDT", 500)
    assert ex.record("BTCUSDT") == trades
    assert trades[0].trade_id > 10**9
    assert [t.trade_id for t in trades] == list(range(trades[0].trade_id, trades[0].trade_id + 500))
    for t in trades:
        assert t.channel == TRADE and t.symbol == "BTCUSDT"
        assert re.fullmatch(r"\d+\.\d{8}", t.price_text) and re.fullmatch(r"\d+\.\d{8}", t.quantity_text)
        assert t.quantity > 0 and t.price > 0
        assert t.event_ts > t.trade_ts
    assert {t.is_buyer_maker for t in trades} == {True, False}


def test_aggregates_cover_every_trade_once_with_the_summed_quantity() -> None:
    ex = FakeExchange({"BTCUSDT": 0}, seed=3)
    trades = ex.make_trades("BTCUSDT", 300) + ex.make_trades("BTCUSDT", 17)
    aggs = ex.agg_record("BTCUSDT")
    by_id = {t.trade_id: t for t in trades}
    assert [a.trade_id for a in aggs] == list(range(aggs[0].trade_id, aggs[0].trade_id + len(aggs)))
    assert aggs[0].first_trade_id == trades[0].trade_id and aggs[-1].last_trade_id == trades[-1].trade_id
    assert len(aggs) < len(trades)  # some taker orders filled more than once at one price
    for previous, agg in itertools.pairwise(aggs):
        assert previous.last_trade_id is not None and agg.first_trade_id == previous.last_trade_id + 1
    for agg in aggs:
        assert agg.channel == AGG_TRADE
        assert agg.first_trade_id is not None and agg.last_trade_id is not None
        members = [by_id[i] for i in range(agg.first_trade_id, agg.last_trade_id + 1)]
        assert {(m.price_text, m.trade_ts, m.is_buyer_maker) for m in members} == {
            (agg.price_text, agg.trade_ts, agg.is_buyer_maker)
        }
        assert sum(m.quantity for m in members) == agg.quantity


def test_unknown_symbol_is_refused_with_a_clear_error() -> None:
    ex = FakeExchange({"BTCUSDT": 0})
    with pytest.raises(ValueError, match="unknown symbol 'XRPUSDT'"):
        ex.make_trades("XRPUSDT", 1)
    with pytest.raises(ValueError, match="upper-case"):
        FakeExchange({"btcusdt": 1.0})


def test_a_recording_can_supply_prices_and_quantities() -> None:
    market = Market("BTCUSDT", 1, replay=RECORDING)
    trades, _ = market.make(3, 1_700_000_000_000)
    assert trades[0].price_text == "61837.63000000" and trades[0].quantity_text == "0.02000000"
    assert trades[0].price == Decimal("61837.63")
