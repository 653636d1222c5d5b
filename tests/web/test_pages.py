"""The live page lists the enabled symbols and opens the chosen one from the dataset; the status page lists
the streams."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from pytest_django import DjangoAssertNumQueries

from streams.binance.protocol import TRADE, Trade
from streams.binance.streamid import StreamId
from streams.models import PriceUpdate
from streams.storage import store_trades
from workers import registry
from workers.keys import status_key, stream_id
from workers.redis import sync_redis
from workers.registry import enable_stream

pytestmark = pytest.mark.django_db


def make(symbol: str, count: int) -> list[Trade]:
    return [Trade(symbol, TRADE, 1000 + i, f"{100 + i}.25000000", "0.50000000", 1723161255342 + i,
                  1723161255350 + i, i % 2 == 0) for i in range(count)]


def test_the_live_page_lists_the_enabled_symbols_and_opens_the_chosen_one_from_the_dataset(
        settings: Any, clean_redis: None) -> None:
    # The page held every enabled symbol's latest trades (a query each); now it names the symbols and the page
    # asks /api/candles/ for the chosen one's day (tests/web/test_candles.py): the latest trades come with it.
    settings.LIVE_PAGE_TRADES = 5
    enable_stream("BTCUSDT", TRADE)
    enable_stream("ETHUSDT", TRADE)
    store_trades(make("BTCUSDT", 8) + make("ETHUSDT", 2))
    response = Client().get("/")
    assert response.status_code == 200
    html = response.content.decode()
    found = re.search(r'<script id="live-config" type="application/json">(.*?)</script>', html, re.S)
    assert found is not None
    config = json.loads(found.group(1))
    assert config == {"symbols": ["BTCUSDT", "ETHUSDT"], "channels": {"BTCUSDT": "trade", "ETHUSDT": "trade"},
                      "chosen": "BTCUSDT", "enabled": 2, "candles_url": "/api/candles/",
                      "coverage_url": "/api/coverage/"}
    opening = Client().get(config["candles_url"], {"symbol": "BTCUSDT"}).json()
    assert opening["candles"] == []  # nothing stored today (the trades are from 2024)
    initial = opening["trades"]
    assert [t["trade_id"] for t in initial] == [1003, 1004, 1005, 1006, 1007]  # the latest, in order
    newest = initial[-1]
    # Stored times come back in µs since the lean storage, live ones in the exchange's ms: the page takes both.
    assert newest.pop("trade_ts") in (1723161255349, 1723161255349000)
    assert newest.pop("event_ts") in (1723161255357, 1723161255357000)
    assert newest == {"ticker_symbol": "BTCUSDT", "channel": "trade", "trade_id": 1007, "price": "107.25000000",
                      "volume": "0.50000000", "is_market_maker": False}
    assert opening["through_trade_id"] == 1007
    assert len(Client().get(config["candles_url"], {"symbol": "ETHUSDT"}).json()["trades"]) == 2
    assert 'data-symbol="BTCUSDT"' in html and 'data-symbol="ETHUSDT"' in html
    assert "/static/web/live.js" in html and "cdn" not in html.lower()
    assert "/static/web/vendor/lightweight-charts.standalone.production.js" in html  # served by the app


def test_an_anonymous_live_page_costs_the_same_with_three_thousand_enabled_streams(
        clean_redis: None, django_assert_num_queries: DjangoAssertNumQueries) -> None:
    # Seen: with 3,001 enabled streams each anonymous GET / took 7.4 s (every stream's latest trades, then every
    # stream's name and a button each); four at once pinned the web process.
    registry.enable_streams([stream_id(f"S{n:04d}USDT", TRADE) for n in range(3001)])
    first = Client().get("/", {"symbol": "S2999USDT"})
    with django_assert_num_queries(0):  # the enabled streams were read once, for a few seconds
        again = Client().get("/", {"symbol": "S2999USDT"})
    html = again.content.decode()
    assert first.content == again.content and html.count("data-symbol=") == 40  # a bounded page
    config = json.loads(re.search(r'<script id="live-config" type="application/json">(.*?)</script>', html,
                                  re.S).group(1))  # type: ignore[union-attr]
    assert config["chosen"] == "S2999USDT" and config["symbols"][0] == "S2999USDT" and config["enabled"] == 3001
    assert "2961 more: symbol" in html  # the others are chosen by name


def test_the_live_page_says_how_to_enable_a_stream_when_none_is(clean_redis: None) -> None:
    assert "manage.py streams enable" in Client().get("/").content.decode()


def test_the_pages_static_files_are_served_by_the_app_itself() -> None:
    response = Client().get("/static/web/live.js")
    assert response.status_code == 200
    assert b"new WebSocket" in response.getvalue()


def test_a_stored_row_turns_back_into_the_same_trade() -> None:
    trade = make("BTCUSDT", 1)[0]
    store_trades([trade])
    # Times come back in microseconds (the storage keeps them so), the same instants.
    assert PriceUpdate.objects.get().as_trade() == trade._replace(trade_ts=trade.trade_ts * 1000,
                                                                  event_ts=trade.event_ts * 1000)


def test_the_status_page_lists_the_streams_and_their_state(clean_redis: None) -> None:
    enable_stream("BTCUSDT", TRADE)
    sync_redis().hset(status_key(StreamId.parse("btcusdt@trade")), mapping={
        "state": "connected", "worker": "w1", "updated_at": str(time.time()), "last_frame_at": str(time.time())})
    client = Client()  # the status page is for staff
    client.force_login(User.objects.create_user("ops", is_staff=True))
    html = client.get("/status/").content.decode()
    assert "btcusdt@trade" in html and "connected" in html and "w1" in html


def test_the_live_page_links_to_the_status_page_for_those_who_may_see_it(settings: Any) -> None:
    settings.STATUS_PUBLIC = False
    assert 'href="/status/"' not in Client().get("/").content.decode(), "anonymous: it would only ask for a login"
    staff = Client()
    staff.force_login(User.objects.create_user("ops", is_staff=True))
    assert 'href="/status/"' in staff.get("/").content.decode()
    settings.STATUS_PUBLIC = True
    assert 'href="/status/"' in Client().get("/").content.decode()


def test_the_status_page_says_what_each_counter_means_and_leads_back(clean_redis: None) -> None:
    enable_stream("BTCUSDT", TRADE)
    sync_redis().hset(status_key(stream_id("BTCUSDT", TRADE)), mapping={
        "state": "connected", "worker": "streams@host:42:8d9f1c2e-77aa-4b1e-9c55-0123456789ab",
        "updated_at": str(time.time()), "ids_back": "135", "last_error": "REST: 429"})
    client = Client()
    client.force_login(User.objects.create_user("ops", is_staff=True))
    html = client.get("/status/").content.decode()
    assert '<a href="/">← live page</a>' in html
    headings = re.findall(r'<th scope="col" class="\w+"><abbr title="([^"]+)">([^<]+)</abbr></th>', html)
    assert len(headings) == 15 and all(len(meaning) > 15 for meaning, _ in headings)
    legend = html[html.index('id="legend"'):]
    assert all(f"<dt>{heading}</dt>" in legend for _, heading in headings) and "<dt>last error</dt>" in legend
    assert '<td class="number">135</td>' in html and '<td class="name" title="streams@host:42:' in html
    assert "last error</abbr>: REST: 429" in html
