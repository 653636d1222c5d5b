"""The stored trades in the admin: one stream at a time, newest first, and no query that reads every row."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from streams.binance.protocol import AGG_TRADE, TRADE, Trade
from streams.models import Instrument
from streams.storage import store_trades

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:streams_priceupdate_changelist"
DAY_MS = 86_400_000


def make(symbol: str, channel: str, trade_id: int, ts: int = 1764547200000) -> Trade:
    return Trade(symbol, channel, trade_id, f"{100 + trade_id}.25000000", "0.50000000", ts + trade_id, ts + trade_id,
                 trade_id % 2 == 0)


@pytest.fixture
def admin_client_(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("boss", "boss@example.com", "pw"))
    return client


@pytest.fixture
def trades() -> dict[tuple[str, str], int]:
    store_trades([make("BTCUSDT", TRADE, n) for n in range(1, 251)] + [make("ETHUSDT", TRADE, n) for n in range(1, 6)]
                 + [make("BTCUSDT", AGG_TRADE, n) for n in range(1, 4)]
                 + [make("BTCUSDT", TRADE, n, ts=1764547200000 - 40 * DAY_MS) for n in range(1001, 1004)])
    return {(i.symbol, i.channel): i.id for i in Instrument.objects.all()}


def trade_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<td class="field-trade_id">(\d+)</td>', html)]


def test_the_list_shows_one_stream_newest_first_and_never_reads_the_whole_table(
        admin_client_: Client, trades: dict[tuple[str, str], int]) -> None:
    stream = trades[("BTCUSDT", TRADE)]
    with CaptureQueriesContext(connection) as queries:
        response = admin_client_.get(reverse(CHANGELIST), {"stream": stream})
    assert response.status_code == 200
    html = response.content.decode()
    assert trade_ids(html) == list(range(1003, 1000, -1)) + list(range(250, 153, -1))  # 100 a page, by id
    assert "btcusdt@trade" in html and "ethusdt@trade" in html  # the stream filter's choices
    sql = [q["sql"] for q in queries.captured_queries if "streams_priceupdate" in q["sql"]]
    # The count is a LIMITed subquery, nothing groups or scans for a date hierarchy, no facet counts.
    assert [s for s in sql if "COUNT(" in s] and all("LIMIT" in s for s in sql if "COUNT(" in s)
    assert not [s for s in sql if "DISTINCT" in s or "date_trunc" in s.lower() or "EXTRACT" in s]
    page = next(s for s in sql if "ORDER BY" in s)
    assert f'"instrument_id" = {stream}' in page and 'ORDER BY "streams_priceupdate"."trade_id" DESC' in page
    assert '"key" DESC' not in page  # (instrument, trade_id) orders totally: no sort on the computed key


def test_without_a_choice_it_shows_the_first_stream_and_offers_no_all(
        admin_client_: Client, trades: dict[tuple[str, str], int]) -> None:
    html = admin_client_.get(reverse(CHANGELIST)).content.decode()
    assert trade_ids(html) == [3, 2, 1]  # btcusdt@aggTrade sorts first
    assert ">All</a>" not in html.split('id="changelist-filter"')[1].split("</details>")[0]


def test_the_filters_and_the_search_narrow_one_stream(admin_client_: Client,
                                                    trades: dict[tuple[str, str], int]) -> None:
    stream = trades[("BTCUSDT", TRADE)]
    found = admin_client_.get(reverse(CHANGELIST), {"stream": str(stream), "q": "42"}).content.decode()
    assert trade_ids(found) == [42]
    assert trade_ids(admin_client_.get(reverse(CHANGELIST), {"stream": str(stream), "q": "x"}).content.decode()) == []
    makers = admin_client_.get(reverse(CHANGELIST), {"stream": str(stream), "is_market_maker__exact": "1",
                                                     "trade_time__gte": "2025-10-01 00:00:00+00:00",
                                                     "trade_time__lt": "2025-11-01 00:00:00+00:00"})
    assert trade_ids(makers.content.decode()) == [1002]  # the trades of 40 days before, even ids only
    eth = admin_client_.get(reverse(CHANGELIST), {"stream": trades[("ETHUSDT", TRADE)]}).content.decode()
    assert trade_ids(eth) == [5, 4, 3, 2, 1]
