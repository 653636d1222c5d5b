"""/api/candles/: the live page's opening of a symbol (the UTC day's one-minute candles from the dataset, the
latest trades, the newest id counted), open to anyone for enabled symbols only, at a cost that does not grow
with the number of enabled streams, kept a few seconds; any range for staff, bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from streams import dataset
from streams.binance.protocol import AGG_TRADE, TRADE, Trade
from streams.models import PriceUpdate
from streams.storage import store_trades
from web import candles
from workers.registry import enable_stream

pytestmark = pytest.mark.django_db

MIDNIGHT = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
NOON = MIDNIGHT + timedelta(hours=12)  # "now" for the tests that say when it is (never after now + 1 day)


def minute_trades(symbol: str = "BTCUSDT", minutes: int = 10, first_id: int = 1) -> list[Trade]:
    """Three trades a minute from 01:00 today: prices rise within a minute, volumes of 1e-8 to show exactness."""
    start = int((MIDNIGHT + timedelta(hours=1)).timestamp() * 1000)
    trades = []
    for m in range(minutes):
        for k, (price, quantity) in enumerate([("100.5", "0.00000001"), ("102.25", "1.5"), ("101", "0.3")]):
            trade_id = first_id + 3 * m + k
            trades.append(Trade(symbol, TRADE, trade_id, f"{Decimal(price) + m:.8f}", f"{Decimal(quantity):.8f}",
                                start + m * 60_000 + k * 1000, start + m * 60_000 + k * 1000 + 3, k == 1))
    return trades


def test_the_opening_is_the_days_candles_of_the_dataset_with_the_latest_trades(settings: Any) -> None:
    settings.LIVE_PAGE_TRADES = 4
    enable_stream("BTCUSDT", TRADE)
    yesterday = [Trade("BTCUSDT", TRADE, 1, "90.00000000", "1.00000000", int(MIDNIGHT.timestamp() * 1000) - 5000,
                       int(MIDNIGHT.timestamp() * 1000) - 4990, False)]
    store_trades(yesterday + minute_trades(first_id=2))
    answer = Client().get("/api/candles/", {"symbol": "btcusdt", "interval": "1m"}).json()
    expected = dataset.candles("BTCUSDT", MIDNIGHT, MIDNIGHT + timedelta(days=1))
    assert len(answer["candles"]) == expected.num_rows == 10  # one a minute, yesterday's trade in none
    first = answer["candles"][0]
    assert first == {"open_time": f"{MIDNIGHT.date()}T01:00:00.000000Z", "open": "100.50000000",
                     "high": "102.25000000", "low": "100.50000000", "close": "101.00000000",
                     "volume": "1.80000001", "trades": 3}  # exact: 0.00000001 + 1.5 + 0.3
    assert [Decimal(c["close"]) for c in answer["candles"]] == expected.column("close").to_pylist()
    assert answer["through_trade_id"] == 31 and (answer["symbol"], answer["channel"]) == ("BTCUSDT", TRADE)
    assert [t["trade_id"] for t in answer["trades"]] == [28, 29, 30, 31]  # the latest, oldest first
    assert answer["from"] == f"{MIDNIGHT.date()}T00:00:00Z"


def test_anyone_may_open_an_enabled_symbol_and_only_that(settings: Any) -> None:
    enable_stream("BTCUSDT", AGG_TRADE)
    client = Client()
    opened = client.get("/api/candles/", {"symbol": "BTCUSDT"})
    assert opened.status_code == 200 and opened.json()["channel"] == AGG_TRADE  # the stream the page shows
    assert client.get("/api/candles/", {"symbol": "ETHUSDT"}).json() == {"error": "ETHUSDT has no enabled stream"}
    assert client.get("/api/candles/", {"symbol": "ETHUSDT"}).status_code == 404
    assert client.get("/api/candles/", {"symbol": "BTC USDT"}).status_code == 400
    assert client.get("/api/candles/", {"symbol": "BTCUSDT", "interval": "7m"}).status_code == 400
    # Any other day or range is for staff (or the metrics token), bounded like /api/trades/.
    ranged = {"symbol": "BTCUSDT", "from": "2026-11-01", "to": "2026-11-02"}
    assert client.get("/api/candles/", ranged).status_code == 401
    assert client.get("/api/candles/", {"symbol": "BTCUSDT", "channel": "trade"}).status_code == 401
    client.force_login(User.objects.create_user("ops", is_staff=True))
    assert client.get("/api/candles/", ranged).json()["candles"] == []
    settings.DATASET_API_MAX_DAYS = 31
    wide = client.get("/api/candles/", {**ranged, "from": "2026-01-01"})
    assert wide.status_code == 400 and "DATASET_API_MAX_DAYS=31" in wide.json()["error"]


def test_an_anonymous_opening_costs_the_same_whatever_the_number_of_enabled_streams(settings: Any) -> None:
    settings.LIVE_CANDLES_CACHE = 0.0
    enable_stream("BTCUSDT", TRADE)
    store_trades(minute_trades())

    def queries_of_an_opening() -> int:
        candles.forget()
        with CaptureQueriesContext(connection) as captured:
            assert Client().get("/api/candles/", {"symbol": "BTCUSDT"}).status_code == 200
        return len(captured.captured_queries)

    few = queries_of_an_opening()
    for n in range(40):
        enable_stream(f"SYM{n}USDT", TRADE)
    assert queries_of_an_opening() == few
    with CaptureQueriesContext(connection) as captured:
        Client().get("/")  # the page itself reads the streams' names, nothing per stream
    assert len(captured.captured_queries) <= 3, [q["sql"] for q in captured.captured_queries]


def test_pages_opening_at_once_share_one_read(settings: Any) -> None:
    settings.LIVE_CANDLES_CACHE = 60.0
    enable_stream("BTCUSDT", TRADE)
    store_trades(minute_trades(minutes=2))
    first = Client().get("/api/candles/", {"symbol": "BTCUSDT"}).json()
    store_trades(minute_trades(minutes=3)[6:])  # a third minute, stored after the first page opened
    with CaptureQueriesContext(connection) as captured:
        again = Client().get("/api/candles/", {"symbol": "BTCUSDT"}).json()
    assert again == first and len(captured.captured_queries) == 1  # the enabled-stream lookup alone
    candles.forget()  # (a late trade of a minute that is over waits for the kept bars' refresh: tested below)
    assert len(Client().get("/api/candles/", {"symbol": "BTCUSDT"}).json()["candles"]) == 3


def test_the_bars_that_are_over_are_kept_and_only_the_days_last_minutes_read_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store_trades(minute_trades(minutes=10))
    at = MIDNIGHT + timedelta(hours=1, minutes=8, seconds=30)  # 01:00..01:06 are over and kept
    bars, through = candles.day_candles("BTCUSDT", TRADE, "1m", at)
    assert bars.num_rows == 10 and through == 30
    # A trade of 01:02 gone from the database changes nothing until the kept bars are read again...
    PriceUpdate.objects.filter(trade_id=7).delete()
    bars, _ = candles.day_candles("BTCUSDT", TRADE, "1m", at)
    assert bars.column("trades").to_pylist()[2] == 3
    # ...while a trade of the last minutes is seen at once.
    store_trades([Trade("BTCUSDT", TRADE, 31, "200.00000000", "1.00000000", int(at.timestamp() * 1000),
                        int(at.timestamp() * 1000) + 2, False)])
    bars, through = candles.day_candles("BTCUSDT", TRADE, "1m", at)
    assert through == 31 and bars.column("high").to_pylist()[8] == Decimal(200)
    monkeypatch.setattr(candles, "CLOSED_REFRESH", 0.0)
    bars, _ = candles.day_candles("BTCUSDT", TRADE, "1m", at)
    assert bars.column("trades").to_pylist()[2] == 2  # read again: as the dataset holds it now
    assert bars.equals(dataset.candles("BTCUSDT", MIDNIGHT, MIDNIGHT + timedelta(days=1)))
    assert candles.day_candles("BTCUSDT", TRADE, "1m", NOON)[0].equals(bars)
