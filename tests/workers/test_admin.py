"""The "Symbol streams" admin: the list with live status, the add form that asks the exchange, actions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import PeriodicTasks
from pytest_django import DjangoAssertNumQueries, Settings

from streams.binance.streamid import stream_id
from streams.fake.exchange import FakeExchange, running_exchange
from workers import listing, registry
from workers.deadletters import REFUSED, DeadLetter, dead_letter
from workers.keys import status_key
from workers.models import SymbolStream
from workers.redis import sync_redis
from workers.status import StreamStatus, write_status_now

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:workers_symbolstream_changelist"
ADD = "admin:workers_symbolstream_add"
QUIET = "ZQADMUSDT"  # a symbol no other test reports a status for (Redis is shared)


@pytest.fixture(autouse=True)
def exchange_settings(settings: Settings, exchange: FakeExchange) -> FakeExchange:
    settings.BINANCE_REST_URL = exchange.rest_url
    return exchange


@pytest.fixture
def admin_client_(client: Client) -> Client:
    user = User.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def live_status() -> Iterator[str]:
    key = status_key(stream_id(QUIET, "trade"))
    write_status_now(sync_redis(), stream_id(QUIET, "trade"), StreamStatus(
        state="connected", trades_per_s=7.25, gaps_healed=3, last_trade_age=100.0, ids_back=4, errors=2,
        last_error="heartbeat: TimeoutError"), ttl=60)
    yield key
    sync_redis().delete(key)


def test_an_anonymous_user_is_sent_to_the_login_page(client: Client) -> None:
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_the_list_shows_each_stream_with_its_live_status(admin_client_: Client, live_status: str) -> None:
    registry.enable_stream(QUIET, "trade")
    registry.enable_stream(QUIET, "aggTrade")
    registry.disable_stream(QUIET, "aggTrade")
    page = admin_client_.get(reverse(CHANGELIST)).content.decode().lower()
    for text in ("zqadmusdt", "aggtrade", "last trade age", "trades/s", "gaps healed", "connected",
                 ">7.2<", ">3<", ">10", "—", ">enable<", ">disable<", "ids back", ">4<", "2 (heartbeat: timeouterror)"):
        assert text in page, text


def test_dead_letters_are_announced_on_the_list_and_shown_with_their_reason(admin_client_: Client,
                                                                         clean_redis: None) -> None:
    dead_letter(sync_redis(), [DeadLetter(REFUSED, "zqadmusdt@trade", "NumericValueOutOfRange: bigint out of range",
                                          '["ZQADMUSDT","trade",9223372036854775808]')])
    listing = admin_client_.get(reverse(CHANGELIST)).content.decode()
    assert "1 dead letters" in listing and reverse("admin:workers_dead_letters") in listing
    page = admin_client_.get(reverse("admin:workers_dead_letters")).content.decode()
    assert "refused by database" in page and "bigint out of range" in page and "zqadmusdt@trade" in page


def test_the_dead_letters_page_needs_a_staff_login(client: Client) -> None:
    assert client.get(reverse("admin:workers_dead_letters")).status_code == 302


def test_the_list_leaves_out_other_periodic_tasks(admin_client_: Client) -> None:
    registry.enable_stream(QUIET, "trade")
    page = admin_client_.get(reverse(CHANGELIST)).content.decode()
    assert "ZQADMUSDT" in page
    assert "flush trades" not in page
    assert SymbolStream.objects.count() == 1


def test_the_add_page_creates_a_stream_for_a_listed_symbol(admin_client_: Client) -> None:
    assert "Add symbol stream" in admin_client_.get(reverse(ADD)).content.decode()
    response = admin_client_.post(reverse(ADD), {"symbol": "btcusdt", "channel": "aggTrade"})
    assert response.status_code == 302, response.content.decode()
    assert registry.enabled_streams() == [stream_id("BTCUSDT", "aggTrade")]


def test_the_add_page_names_an_unknown_symbol(admin_client_: Client) -> None:
    response = admin_client_.post(reverse(ADD), {"symbol": "dogeusdt", "channel": "trade"})
    assert response.status_code == 200
    assert "unknown symbol &#x27;DOGEUSDT&#x27;: not listed on the exchange" in response.content.decode()
    assert not registry.stream_tasks().exists()


def test_the_add_page_names_a_malformed_symbol(admin_client_: Client) -> None:
    response = admin_client_.post(reverse(ADD), {"symbol": "BTC/USDT", "channel": "trade"})
    assert "invalid symbol &#x27;BTC/USDT&#x27;" in response.content.decode()
    assert not registry.stream_tasks().exists()


def test_the_add_page_says_when_the_exchange_cannot_be_reached(admin_client_: Client, settings: Settings) -> None:
    settings.BINANCE_REST_URL = "http://127.0.0.1:9"
    response = admin_client_.post(reverse(ADD), {"symbol": "BTCUSDT", "channel": "trade"})
    assert "Could not check BTCUSDT with the exchange" in response.content.decode()
    assert not registry.stream_tasks().exists()


def test_the_actions_enable_and_disable_the_selected_streams(admin_client_: Client) -> None:
    task = registry.enable_stream("BTCUSDT", "trade")
    other = registry.enable_stream("ETHUSDT", "trade")
    response = admin_client_.post(reverse(CHANGELIST), {"action": "disable_selected",
                                                         "_selected_action": [task.pk, other.pk]})
    assert response.status_code == 302
    assert registry.enabled_streams() == []
    admin_client_.post(reverse(CHANGELIST), {"action": "enable_selected", "_selected_action": [task.pk]})
    assert registry.enabled_streams() == [stream_id("BTCUSDT", "trade")]


def test_a_stream_page_opens_read_only(admin_client_: Client) -> None:
    task = registry.enable_stream("BTCUSDT", "trade")
    response = admin_client_.get(reverse("admin:workers_symbolstream_change", args=[task.pk]))
    assert response.status_code == 200
    assert "stream btcusdt@trade" in response.content.decode()


# --- in bulk, and every trading symbol at once -----------------------------------------------------------------

ENABLE_TRADING = "admin:workers_enable_trading"


def test_the_actions_change_every_selected_stream_in_one_transaction(
        admin_client_: Client, django_assert_max_num_queries: DjangoAssertNumQueries) -> None:
    registry.enable_streams([stream_id(f"B{i:03d}USDT", "trade") for i in range(300)])
    pks = list(SymbolStream.objects.values_list("pk", flat=True))
    before = PeriodicTasks.last_change()
    with django_assert_max_num_queries(25):  # the session, the selection, one locked read, one UPDATE, the notice
        response = admin_client_.post(reverse(CHANGELIST), {"action": "disable_selected", "_selected_action": pks})
    assert response.status_code == 302 and registry.enabled_streams() == []
    assert PeriodicTasks.last_change() > before
    page = admin_client_.get(reverse(CHANGELIST)).content.decode()
    assert "Disabled 300 streams" in page
    admin_client_.post(reverse(CHANGELIST), {"action": "enable_selected", "_selected_action": pks[:2]})
    assert len(registry.enabled_streams()) == 2


@pytest.fixture
def market(settings: Settings, clean_redis: None) -> Iterator[FakeExchange]:
    symbols = [*(f"A{i:03d}USDT" for i in range(12)), "C000BTC", "C001BTC"]
    with running_exchange(symbols=dict.fromkeys(symbols, 0.0), seed=5) as ex:
        ex.set_status("A000USDT", "BREAK")
        settings.BINANCE_REST_URL = ex.rest_url
        yield ex


def test_every_trading_symbol_of_a_quote_is_enabled_from_the_list_page(admin_client_: Client,
                                                                        market: FakeExchange) -> None:
    listing_page = admin_client_.get(reverse(CHANGELIST)).content.decode()
    assert reverse(ENABLE_TRADING) in listing_page and "Enable every trading symbol" in listing_page
    assert "quote" in admin_client_.get(reverse(ENABLE_TRADING)).content.decode()
    response = admin_client_.post(reverse(ENABLE_TRADING), {"quote": "usdt", "channel": "aggTrade"}, follow=True)
    assert "Enabled 11 streams; 1 symbol not trading skipped: A000USDT (BREAK)" in response.content.decode()
    assert market.stats.rest_requests["/api/v3/exchangeInfo"] == 1
    enabled = registry.enabled_streams()
    assert len(enabled) == 11 and {s.channel for s in enabled} == {"aggTrade"}
    assert stream_id("A000USDT", "aggTrade") not in enabled


def test_the_enable_trading_page_says_what_went_wrong(admin_client_: Client, market: FakeExchange,
                                                      settings: Settings) -> None:
    page = admin_client_.post(reverse(ENABLE_TRADING), {"quote": "XYZ", "channel": "trade"}).content.decode()
    assert "The exchange lists no symbol quoted in XYZ." in page
    settings.BINANCE_REST_URL = "http://127.0.0.1:9"
    page = admin_client_.post(reverse(ENABLE_TRADING), {"quote": "", "channel": "trade"}).content.decode()
    assert "Could not ask the exchange for its symbols" in page
    assert not registry.stream_tasks().exists()


def test_the_enable_trading_page_needs_a_staff_login(client: Client) -> None:
    assert client.get(reverse(ENABLE_TRADING)).status_code == 302


def test_the_list_shows_a_symbol_that_does_not_trade(admin_client_: Client, market: FakeExchange) -> None:
    registry.enable_streams([stream_id("A000USDT", "trade"), stream_id("A001USDT", "trade")])
    listing.check_trading()
    page = admin_client_.get(reverse(CHANGELIST)).content.decode()
    assert page.count("not trading (BREAK)") == 1
