"""Storage: one idempotent statement per batch, exact values, on PostgreSQL and on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connections
from psycopg.errors import UniqueViolation
from pytest_django import DjangoAssertNumQueries

from streams import partitions
from streams.binance.protocol import AGG_TRADE, TRADE, Trade
from streams.binance.streamid import stream_id
from streams.models import PriceUpdate
from streams.storage import last_stored_ids, store_trades

pytestmark = pytest.mark.django_db(databases=["default", "sqlite"])

RECEIVED = 1723161255399123


def make(trade_id: int, *, price: str = "61837.63000000", qty: str = "0.02000000", ts: int = 1723161255342,
         channel: str = TRADE, symbol: str = "BTCUSDT", event: int | None = None,
         received: int | None = None) -> Trade:
    first, last = (trade_id * 3, trade_id * 3 + 2) if channel == AGG_TRADE else (None, None)
    return Trade(symbol, channel, trade_id, price, qty, ts, ts + 1 if event is None else event, trade_id % 2 == 0,
                 first, last, received)


def stored(using: str = "default") -> list[PriceUpdate]:
    return list(PriceUpdate.objects.using(using).order_by("ticker_symbol", "channel", "trade_id"))


def raw(sql: str, *params: Any) -> list[tuple[Any, ...]]:  # any SQL values
    with connections["default"].cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


@pytest.mark.django_db(transaction=True)
def test_a_new_batch_is_one_copy_in_one_transaction_on_postgresql(
        django_assert_num_queries: DjangoAssertNumQueries) -> None:
    store_trades([make(1), make(2)])  # the first batch of a stream and month also makes its instrument and partition
    # Django's query log shows BEGIN and COMMIT but not the COPY between them (psycopg's copy API).
    with django_assert_num_queries(2):
        result = store_trades([make(i) for i in range(3, 3003)])  # several COPY chunks, one statement
    assert (result.inserted, result.duplicates, result.rejected) == (3000, 0, 0)
    with django_assert_num_queries(1):  # a single trade: one INSERT ... VALUES ... ON CONFLICT DO NOTHING
        store_trades([make(3003)])
    assert PriceUpdate.objects.count() == 3003


@pytest.mark.django_db(transaction=True)
def test_a_batch_with_a_stored_trade_falls_back_to_insert_on_conflict(
        django_assert_num_queries: DjangoAssertNumQueries) -> None:
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


@pytest.mark.parametrize("using", ["default", "sqlite"])
def test_a_trade_given_in_milliseconds_then_microseconds_is_one_row(using: str) -> None:
    # The archive gives milliseconds before 2025, REST and the stream microseconds (timeUnit=MICROSECOND):
    # the identity is (instrument, trade id), whatever the unit of the time.
    in_ms = make(7, ts=1723161255342)
    in_us = make(7, ts=1723161255342871)
    assert store_trades([in_ms], using).inserted == 1
    assert (store_trades([in_us], using).duplicates, store_trades([in_us, make(8)], using).duplicates) == (1, 1)
    assert [(row.trade_id, row.trade_time) for row in stored(using)] == [
        (7, in_ms.trade_time), (8, make(8).trade_time)]


def test_trade_and_agg_trade_ids_are_kept_apart() -> None:
    store_trades([make(7, channel=TRADE), make(7, channel=AGG_TRADE), make(7, symbol="ETHUSDT")])
    rows = stored()
    assert [(r.ticker_symbol, r.channel, r.trade_id) for r in rows] == [
        ("BTCUSDT", AGG_TRADE, 7), ("BTCUSDT", TRADE, 7), ("ETHUSDT", TRADE, 7)]
    assert (rows[0].first_trade_id, rows[0].last_trade_id) == (21, 23)
    assert [r.pk for r in rows] == ["BTCUSDT:aggTrade:7", "BTCUSDT:trade:7", "ETHUSDT:trade:7"]
    assert PriceUpdate.objects.get(pk="BTCUSDT:aggTrade:7").channel == AGG_TRADE
    btc, bnb = stream_id("BTCUSDT", TRADE), stream_id("BNBUSDT", TRADE)
    assert last_stored_ids([btc, bnb]) == {btc: 7}


def test_postgresql_keeps_every_value_exactly() -> None:
    extremes = [
        make(1, price="99999999999999999999.99999999", qty="0.00000001"),  # 20 integer digits, 8 decimals
        make(2, price="0.00000001", qty="12345678901234567890.12345678"),
        make(3, price="61837.63000000", qty="1", ts=1723161255342123, event=1723161255342999,
             received=RECEIVED),  # microseconds, and when it was received
        make(4, price="1.10000000", qty="0.1"),
    ]
    store_trades(extremes)
    rows = stored()
    for row, trade in zip(rows, extremes, strict=True):
        assert row.price == Decimal(trade.price_text) and row.volume == Decimal(trade.quantity_text)
        assert row.trade_time == trade.trade_time and row.event_time == trade.event_time
        assert row.trade_time.tzinfo is not None and row.trade_time.utcoffset() == timedelta(0)
        assert row.is_market_maker is trade.is_buyer_maker
        assert row.as_trade() == trade._replace(trade_ts=trade.trade_ts if trade.trade_ts > 10**14 else
                                                trade.trade_ts * 1000,
                                                event_ts=trade.event_ts if trade.event_ts > 10**14 else
                                                trade.event_ts * 1000)
    assert rows[2].trade_time == datetime(2024, 8, 8, 23, 54, 15, 342123, tzinfo=UTC)
    assert rows[2].event_time == datetime(2024, 8, 8, 23, 54, 15, 342999, tzinfo=UTC)
    assert rows[2].received_time == datetime(2024, 8, 8, 23, 54, 15, 399123, tzinfo=UTC)
    assert [row.received_time for row in rows[:2]] == [None, None]
    # The exchange's decimal text comes back as it was sent (numeric without a declared scale).
    assert raw("SELECT price::text, volume::text FROM streams_priceupdate ORDER BY trade_id") == [
        ("99999999999999999999.99999999", "0.00000001"), ("0.00000001", "12345678901234567890.12345678"),
        ("61837.63000000", "1"), ("1.10000000", "0.1")]


def test_postgresql_stores_times_as_microseconds_after_the_trade_and_nothing_for_none() -> None:
    hour = 3_600_000_000
    rest = make(1, event=1723161255342)  # REST and the archive: the event time is the trade time
    live = make(2, ts=1723161255342123, event=1723161255342999, received=RECEIVED)
    odd = make(3, ts=1723161255342123, event=1723161255342123 + hour, received=1723161255342123 - hour)
    store_trades([rest, live, odd])
    assert raw("SELECT trade_id, event_time IS NULL, event_after_us, received_time IS NULL, received_after_us "
               "FROM streams_trade ORDER BY 1") == [
        (1, True, None, True, None), (2, True, 876, True, 57_000), (3, False, None, False, None)]  # odd: whole
    rows = stored()
    assert [row.event_time for row in rows] == [rest.trade_time, live.event_time, odd.event_time]
    assert [row.received_time for row in rows] == [
        None, datetime(2024, 8, 8, 23, 54, 15, 399123, tzinfo=UTC), datetime(2024, 8, 8, 22, 54, 15, 342123,
                                                                             tzinfo=UTC)]


def test_sqlite_keeps_what_its_decimals_can_hold() -> None:
    # SQLite stores decimals as REAL: about 15 significant digits survive (docs/dataset.md, "What SQLite keeps").
    trades = [make(1, price="61837.63000000", qty="0.00012000"), make(2, price="0.00000001", qty="123.45",
                                                                      received=RECEIVED)]
    store_trades(trades, "sqlite")
    rows = stored("sqlite")
    assert [(r.price, r.volume) for r in rows] == [(Decimal("61837.63"), Decimal("0.00012")),
                                                   (Decimal("1E-8"), Decimal("123.45"))]
    assert rows[0].trade_time == trades[0].trade_time
    assert (rows[0].received_time, rows[1].received_time) == (None, datetime(2024, 8, 8, 23, 54, 15, 399123,
                                                                             tzinfo=UTC))


@pytest.mark.parametrize("using", ["default", "sqlite"])
def test_values_the_column_cannot_hold_are_rejected_never_rounded(using: str) -> None:
    result = store_trades([make(1), make(2, price="1.123456789"), make(3, qty="123456789012345678901")], using)
    assert (result.inserted, result.rejected) == (1, 2)
    assert all("numeric(28,8)" in refusal.reason for refusal in result.refused)
    assert [row.trade_id for row in stored(using)] == [1]


def test_the_identity_holds_in_the_database_itself() -> None:
    store_trades([make(1)])
    with connections["default"].cursor() as cursor, pytest.raises(Exception, match="_identity") as caught:
        cursor.execute("INSERT INTO streams_trade SELECT * FROM streams_trade")
    assert isinstance(caught.value.__cause__, UniqueViolation)


def test_a_trade_of_a_month_without_a_partition_makes_it() -> None:
    old = make(1, ts=1514764800000)  # 2018-01-01T00:00:00Z: a month nothing made ahead
    assert partitions.Month(2018, 1) not in _months()
    assert store_trades([old, make(2)]).inserted == 2
    assert {partitions.Month(2018, 1), partitions.Month(2024, 8)} <= _months()
    assert raw("SELECT tableoid::regclass::text FROM streams_trade WHERE trade_id = 1") == [("streams_trade_2018_01",)]


@pytest.mark.django_db(transaction=True)
def test_a_dropped_partition_is_made_again_when_a_trade_of_its_month_comes() -> None:
    store_trades([make(1)])  # committed: this process now knows 2024-08 has a partition
    with connections["default"].cursor() as cursor:  # retention, from another process
        partitions.detach_and_drop(cursor, partitions.Month(2024, 8))
    assert store_trades([make(2)]).inserted == 1
    assert [row.trade_id for row in stored()] == [2]


def test_orm_queries_by_symbol_and_channel_use_the_instrument_id() -> None:
    store_trades([make(i) for i in range(1, 4)] + [make(i, channel=AGG_TRADE) for i in range(1, 3)])
    by_stream = PriceUpdate.objects.filter(ticker_symbol="BTCUSDT", channel=TRADE)
    assert '"instrument_id" = (SELECT' in str(by_stream.query)
    assert list(by_stream.order_by("-trade_id").values_list("trade_id", flat=True)) == [3, 2, 1]
    assert PriceUpdate.objects.filter(ticker_symbol="BTCUSDT").count() == 5  # the view's own join, for one text
    assert PriceUpdate.objects.filter(ticker_symbol="BTCUSDT", channel="nope").count() == 0
    assert PriceUpdate.objects.exclude(ticker_symbol="BTCUSDT", channel=TRADE).count() == 2
    assert PriceUpdate.objects.exclude(ticker_symbol="BTCUSDT", channel="nope").count() == 5


def test_deleting_through_the_orm_deletes_the_stored_trades() -> None:
    store_trades([make(i) for i in range(1, 6)] + [make(1, symbol="ETHUSDT")])
    assert PriceUpdate.objects.filter(ticker_symbol="BTCUSDT", channel=TRADE, trade_id__gt=3).delete() == (
        2, {"streams.PriceUpdate": 2})
    assert [(row.ticker_symbol, row.trade_id) for row in stored()] == [
        ("BTCUSDT", 1), ("BTCUSDT", 2), ("BTCUSDT", 3), ("ETHUSDT", 1)]


def test_the_last_stored_id_and_the_latest_trades_are_index_walks() -> None:
    trades = [make(i, ts=1723161255342 + i) for i in range(1, 20_001)]
    store_trades(trades + [make(i, symbol="ETHUSDT") for i in range(1, 20_001)])
    raw("ANALYZE streams_trade")
    assert last_stored_ids([stream_id("BTCUSDT", TRADE)]) == {stream_id("BTCUSDT", TRADE): 20_000}
    latest = PriceUpdate.objects.filter(ticker_symbol="BTCUSDT", channel=TRADE).order_by("-trade_id")[:200]
    assert [row.trade_id for row in latest] == list(range(20_000, 19_800, -1))
    sql, params = latest.query.sql_with_params()
    plan = "\n".join(row[0] for row in raw(f"EXPLAIN {sql}", *params))
    assert "Index Scan Backward using streams_trade_2024_08_identity" in plan
    assert "Seq Scan" not in plan and "Sort  (cost" not in plan


def test_a_live_trade_costs_at_most_125_bytes_with_its_index() -> None:
    # The seed's layout took ~265 bytes a trade; docs/dataset.md, "Storage", says how it is measured at scale.
    count = 20_000
    trades = [make(i, price=f"{61837 + i % 997}.{i % 100:02d}000000", qty=f"0.{i % 9973:05d}000",
                   ts=1723161255342123 + i * 997, event=1723161255343123 + i * 997,
                   received=1723161255350123 + i * 997) for i in range(1, count + 1)]
    store_trades(trades)
    [(size,)] = raw("SELECT pg_total_relation_size('streams_trade_2024_08')")  # heap, indexes, TOAST
    assert size / count <= 125


def _months() -> set[partitions.Month]:
    with connections["default"].cursor() as cursor:
        return partitions.existing(cursor)
