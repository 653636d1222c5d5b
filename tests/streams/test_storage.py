"""Storage: one idempotent statement per batch, exact values, on PostgreSQL and on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connections

from streams.binance.protocol import AGG_TRADE, TRADE, Trade
from streams.models import PriceUpdate
from streams.storage import last_stored_ids, store_trades

pytestmark = pytest.mark.django_db(databases=["default", "sqlite"])


def make(trade_id: int, *, price: str = "61837.63000000", qty: str = "0.02000000", ts: int = 1723161255342,
         channel: str = TRADE, symbol: str = "BTCUSDT") -> Trade:
    first_last = (trade_id * 3, trade_id * 3 + 2) if channel == AGG_TRADE else (None, None)
    return Trade(symbol, channel, trade_id, price, qty, ts, ts + 1, trade_id % 2 == 0, *first_last)


def stored(using: str = "default") -> list[PriceUpdate]:
    return list(PriceUpdate.objects.using(using).order_by("ticker_symbol", "channel", "trade_id"))


@pytest.mark.django_db(transaction=True)
def test_a_new_batch_is_one_copy_in_one_transaction_on_postgresql(django_assert_num_queries) -> None:  # type: ignore[no-untyped-def]
    # Django's query log shows BEGIN and COMMIT but not the COPY between them (psycopg's copy API).
    with django_assert_num_queries(2):
        result = store_trades([make(i) for i in range(1, 501)])
    assert (result.inserted, result.duplicates, result.rejected) == (500, 0, 0)
    with django_assert_num_queries(1):  # a single trade: one INSERT ... VALUES ... ON CONFLICT DO NOTHING
        store_trades([make(501)])
    assert PriceUpdate.objects.count() == 501


@pytest.mark.django_db(transaction=True)
def test_a_batch_with_a_stored_trade_falls_back_to_insert_on_conflict(django_assert_num_queries) -> None:  # type: ignore[no-untyped-def]
    store_trades([make(i) for i in range(1, 11)])
    # The direct COPY is refused (BEGIN, ROLLBACK); then BEGIN, the staging table (once a session),
    # INSERT ... SELECT ... ON CONFLICT DO NOTHING, COMMIT (the COPYs are not in Django's log).
    with django_assert_num_queries(6):
        result = store_trades([make(i) for i in range(5, 21)])
    assert (result.inserted, result.duplicates) == (10, 6)
    with django_assert_num_queries(5):
        store_trades([make(i) for i in range(15, 31)])
    assert list(PriceUpdate.objects.order_by("trade_id").values_list("trade_id", flat=True)) == list(range(1, 31))


@pytest.mark.parametrize("using", ["default", "sqlite"])
def test_storing_twice_keeps_one_row_per_trade(using: str) -> None:
    first = store_trades([make(i) for i in range(1, 11)], using)
    again = store_trades([make(i) for i in range(5, 16)], using)
    assert (first.inserted, again.inserted, again.duplicates) == (10, 5, 6)
    assert [row.trade_id for row in stored(using)] == list(range(1, 16))


def test_trade_and_agg_trade_ids_are_kept_apart() -> None:
    store_trades([make(7, channel=TRADE), make(7, channel=AGG_TRADE), make(7, symbol="ETHUSDT")])
    rows = stored()
    assert [(r.ticker_symbol, r.channel, r.trade_id) for r in rows] == [
        ("BTCUSDT", AGG_TRADE, 7), ("BTCUSDT", TRADE, 7), ("ETHUSDT", TRADE, 7)]
    assert (rows[0].first_trade_id, rows[0].last_trade_id) == (21, 23)
    assert last_stored_ids([("BTCUSDT", TRADE), ("BNBUSDT", TRADE)]) == {("BTCUSDT", TRADE): 7}


def test_postgresql_keeps_every_value_exactly() -> None:
    extremes = [
        make(1, price="99999999999999999999.99999999", qty="0.00000001"),  # 20 integer digits, 8 decimals
        make(2, price="0.00000001", qty="12345678901234567890.12345678"),
        make(3, price="61837.63000000", qty="1", ts=1723161255342123),  # microseconds
        make(4, price="1.10000000", qty="0.1"),
    ]
    store_trades(extremes)
    rows = stored()
    for row, trade in zip(rows, extremes, strict=True):
        assert row.price == Decimal(trade.price_text) and row.volume == Decimal(trade.quantity_text)
        assert row.trade_time == trade.trade_time and row.event_time == trade.event_time
        assert row.trade_time.tzinfo is not None and row.trade_time.utcoffset().total_seconds() == 0
        assert row.is_market_maker is trade.is_buyer_maker
    assert rows[2].trade_time == datetime(2024, 8, 8, 23, 54, 15, 342123, tzinfo=UTC)
    assert str(rows[0].price) == "99999999999999999999.99999999"


def test_sqlite_keeps_what_its_decimals_can_hold() -> None:
    # SQLite stores decimals as REAL: about 15 significant digits survive (README, "What SQLite keeps").
    trades = [make(1, price="61837.63000000", qty="0.00012000"), make(2, price="0.00000001", qty="123.45")]
    store_trades(trades, "sqlite")
    rows = stored("sqlite")
    assert [(r.price, r.volume) for r in rows] == [(Decimal("61837.63"), Decimal("0.00012")),
                                                   (Decimal("1E-8"), Decimal("123.45"))]
    assert rows[0].trade_time == trades[0].trade_time


@pytest.mark.parametrize("using", ["default", "sqlite"])
def test_values_the_column_cannot_hold_are_rejected_never_rounded(using: str) -> None:
    result = store_trades([make(1), make(2, price="1.123456789"), make(3, qty="123456789012345678901")], using)
    assert (result.inserted, result.rejected) == (1, 2)
    assert all("numeric(28,8)" in refusal.reason for refusal in result.refused)
    assert [row.trade_id for row in stored(using)] == [1]


def test_the_unique_constraint_holds_in_the_database_itself() -> None:
    store_trades([make(1)])
    with connections["default"].cursor() as cursor, pytest.raises(Exception, match="unique_trade"):
        cursor.execute("INSERT INTO streams_priceupdate (ticker_symbol, channel, trade_id, price, volume, "
                       "trade_time, event_time, is_market_maker) SELECT ticker_symbol, channel, trade_id, price, "
                       "volume, trade_time, event_time, is_market_maker FROM streams_priceupdate")
