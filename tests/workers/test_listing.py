"""workers.listing: exchangeInfo in one call, and enabled symbols that stop trading, reported and kept enabled."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytest_django import Settings

from streams.binance.errors import ExchangeUnavailable
from streams.binance.streamid import stream_id
from streams.fake.exchange import FakeExchange, running_exchange
from workers import listing, registry

pytestmark = pytest.mark.django_db

SYMBOLS = [f"L{i:03d}USDT" for i in range(120)]


@pytest.fixture
def market(settings: Settings, clean_redis: None) -> Iterator[FakeExchange]:
    with running_exchange(symbols=dict.fromkeys(SYMBOLS, 0.0), seed=3) as ex:
        settings.BINANCE_REST_URL = ex.rest_url
        yield ex


def info_calls(ex: FakeExchange) -> int:
    return ex.stats.rest_requests["/api/v3/exchangeInfo"]


def test_named_symbols_are_asked_for_by_name_and_many_take_the_whole_list_in_one_call(market: FakeExchange) -> None:
    assert sorted(listing.listing(["l001usdt", "L002USDT"])) == ["L001USDT", "L002USDT"]
    assert info_calls(market) == 1
    assert len(listing.listing(SYMBOLS[:listing.NAMED_AT_MOST + 1])) == listing.NAMED_AT_MOST + 1
    assert info_calls(market) == 2
    assert sorted(listing.listing(["L001USDT", "NOPEUSDT"])) == ["L001USDT"]  # -1121 for the names: the list
    assert info_calls(market) == 4


def test_the_check_marks_what_stopped_trading_once_and_clears_it_when_it_trades_again(
        market: FakeExchange, caplog: pytest.LogCaptureFixture) -> None:
    registry.enable_streams([stream_id(s, "trade") for s in SYMBOLS])
    assert listing.check_trading() == {} and info_calls(market) == 1  # 120 symbols: one call
    market.set_status("L007USDT", "BREAK")
    market.set_status("L008USDT", "HALT")
    assert listing.check_trading() == {"L007USDT": "BREAK", "L008USDT": "HALT"}
    assert listing.not_trading() == {"L007USDT": "BREAK", "L008USDT": "HALT"}
    market.set_status("L008USDT", "END_OF_DAY")
    listing.check_trading()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w.split(":")[0] for w in warnings] == ["L007USDT", "L008USDT", "L008USDT"]  # once per change
    assert len(registry.enabled_streams()) == 120  # kept enabled: it resumes when it trades
    market.set_status("L007USDT", "TRADING")
    market.set_status("L008USDT", "TRADING")
    assert listing.check_trading() == {} and listing.not_trading() == {}
    assert "L007USDT: trading again" in caplog.text


def test_a_symbol_the_exchange_lists_no_more_is_marked_not_listed(market: FakeExchange) -> None:
    registry.enable_streams([stream_id("L001USDT", "trade"), stream_id("GONEUSDT", "trade")])
    assert listing.check_trading() == {"GONEUSDT": listing.NOT_LISTED}


def test_a_disabled_symbol_is_no_longer_reported(market: FakeExchange, caplog: pytest.LogCaptureFixture) -> None:
    registry.enable_streams([stream_id("L001USDT", "trade")])
    market.set_status("L001USDT", "BREAK")
    listing.check_trading()
    registry.disable_all()
    assert listing.check_trading() == {} and listing.not_trading() == {}
    assert info_calls(market) == 1  # nothing enabled: nothing to ask
    assert "trading again" not in caplog.text


def test_the_check_keeps_the_marks_when_the_exchange_cannot_answer(market: FakeExchange, settings: Settings) -> None:
    registry.enable_streams([stream_id("L001USDT", "trade")])
    market.set_status("L001USDT", "BREAK")
    listing.check_trading()
    settings.BINANCE_REST_URL = "http://127.0.0.1:9"
    with pytest.raises(ExchangeUnavailable):  # transient: the periodic task logs it once and tries next tick
        listing.check_trading()
    assert listing.not_trading() == {"L001USDT": "BREAK"}
