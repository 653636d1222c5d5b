"""`manage.py streams enable|disable|list|status`: output, exit codes, and clear errors for bad input."""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from pytest_django import Settings

from streams.binance.streamid import stream_id
from streams.fake.exchange import FakeExchange, running_exchange
from workers import listing, registry
from workers.keys import status_key
from workers.redis import sync_redis
from workers.status import StreamStatus, write_status_now

pytestmark = pytest.mark.django_db

# Symbols no other test reports a status for (Redis is shared between test modules).
QUIET = "ZQCMDUSDT"


@pytest.fixture(autouse=True)
def exchange_settings(settings: Settings, exchange: FakeExchange) -> FakeExchange:
    settings.BINANCE_REST_URL = exchange.rest_url
    return exchange


@pytest.fixture
def live_status() -> Iterator[str]:
    """A status report for zqcmdusdt@trade, as a running stream task writes it."""
    sid = f"{QUIET.lower()}@trade"
    key = status_key(stream_id(QUIET, "trade"))
    write_status_now(sync_redis(), stream_id(QUIET, "trade"),
                     StreamStatus(state="connected", worker="w1", trades_per_s=12.5, gaps_healed=2,
                                  last_trade_age=100.0), ttl=60)
    yield sid
    sync_redis().delete(key)


def streams(*args: str) -> str:
    out = StringIO()
    call_command("streams", *args, stdout=out)
    return out.getvalue()


def test_enable_creates_a_stream_for_a_listed_symbol() -> None:
    assert streams("enable", "btcusdt") == "enabled btcusdt@trade\n"
    assert streams("enable", "ETHUSDT", "--channel", "aggtrade") == "enabled ethusdt@aggTrade\n"
    assert sorted(registry.enabled_streams()) == [stream_id("BTCUSDT", "trade"), stream_id("ETHUSDT", "aggTrade")]


def test_enable_refuses_an_unknown_symbol_by_name() -> None:
    with pytest.raises(CommandError, match=r"DOGEUSDT.*not listed"):
        streams("enable", "DOGEUSDT")
    assert not registry.stream_tasks().exists()


def test_enable_says_when_the_exchange_cannot_be_reached(settings: Settings) -> None:
    settings.BINANCE_REST_URL = "http://127.0.0.1:9"
    with pytest.raises(CommandError, match=r"cannot enable BTCUSDT: .*cannot reach"):
        streams("enable", "BTCUSDT")


@pytest.mark.parametrize(("args", "message"), [
    (("enable",), "needs a SYMBOL"),
    (("disable",), "needs a SYMBOL"),
    (("enable", "BTC-USDT"), "invalid symbol 'BTC-USDT'"),
    (("enable", "BTCUSDT", "--channel", "depth"), "invalid channel 'depth'"),
    (("list", "--channel", "kline"), "invalid channel 'kline'"),
    (("disable", "ETHUSDT"), "no stream ethusdt@trade"),
    (("status", "ETHUSDT"), "no stream for ETHUSDT"),
    (("restart", "BTCUSDT"), "invalid choice: 'restart'"),
])
def test_bad_input_gets_an_error_naming_the_problem(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        streams(*args)


def test_disable_and_list() -> None:
    registry.enable_stream("BTCUSDT", "trade")
    registry.enable_stream("ETHUSDT", "trade")
    assert streams("disable", "ethusdt") == "disabled ethusdt@trade\n"
    assert streams("disable", "ethusdt") == "ethusdt@trade was already disabled\n"
    assert streams("list") == "btcusdt@trade\tenabled\nethusdt@trade\tdisabled\n"
    assert streams("list", "BTCUSDT") == "btcusdt@trade\tenabled\n"


def test_list_says_when_there_is_nothing() -> None:
    assert "no symbol streams" in streams("list")


def test_status_prints_the_live_status_or_says_there_is_none(live_status: str) -> None:
    registry.enable_stream(QUIET, "trade")
    registry.enable_stream(QUIET, "aggTrade")
    lines = streams("status").splitlines()
    assert lines[0].startswith("zqcmdusdt@aggTrade\tenabled\tno status")
    assert lines[1].startswith("zqcmdusdt@trade\tenabled\tstate=connected worker=w1")
    assert "trades_per_s=12.5" in lines[1]
    assert "gaps_healed=2 " in lines[1]
    assert "last_trade_age=10" in lines[1]  # 100 s and a little more
    assert streams("status", QUIET, "--channel", "trade").splitlines() == lines[1:]


def test_the_command_exits_non_zero_for_an_unknown_symbol(exchange_settings: FakeExchange) -> None:
    """Through manage.py, as a person runs it: the error on stderr, exit code 1."""
    from tests.helpers import command_env, manage

    result = manage("streams", "enable", "DOGEUSDT", env=command_env(exchange_settings))
    assert result.returncode == 1
    assert "DOGEUSDT" in result.stderr


# --- many at once ----------------------------------------------------------------------------------------------

USDT = [f"A{i:03d}USDT" for i in range(40)]
BTC = [f"C{i:03d}BTC" for i in range(5)]
STOPPED = {"A001USDT": "BREAK", "A002USDT": "BREAK", "A003USDT": "HALT", "C000BTC": "BREAK"}


@pytest.fixture
def market(settings: Settings, clean_redis: None) -> Iterator[FakeExchange]:
    """An exchange listing 45 symbols, 4 of them not trading."""
    with running_exchange(symbols=dict.fromkeys(USDT + BTC, 0.0), seed=9) as ex:
        for symbol, status in STOPPED.items():
            ex.set_status(symbol, status)
        settings.BINANCE_REST_URL = ex.rest_url
        yield ex


def info_calls(ex: FakeExchange) -> int:
    return ex.stats.rest_requests["/api/v3/exchangeInfo"]


def test_enable_all_with_a_quote_takes_every_trading_symbol_of_it_in_one_call(market: FakeExchange) -> None:
    assert streams("enable", "--all", "--quote", "usdt") == (
        "enabled 37 streams; 3 symbols not trading skipped: A001USDT (BREAK), A002USDT (BREAK), A003USDT (HALT)\n")
    assert info_calls(market) == 1
    enabled = registry.enabled_streams()
    assert len(enabled) == 37 and all(s.symbol.endswith("USDT") and s.symbol not in STOPPED for s in enabled)
    assert streams("enable", "--all", "--channel", "trade", "--channel", "aggTrade") == (
        "enabled 45 streams (37 already enabled); 4 symbols not trading skipped: A001USDT (BREAK), A002USDT (BREAK), "
        "A003USDT (HALT), C000BTC (BREAK)\n")
    assert info_calls(market) == 2 and len(registry.enabled_streams()) == 41 * 2


def test_enable_all_refuses_a_quote_nothing_is_quoted_in(market: FakeExchange) -> None:
    with pytest.raises(CommandError, match="lists no symbol quoted in XYZ"):
        streams("enable", "--all", "--quote", "XYZ")
    assert not registry.stream_tasks().exists()


def test_enable_several_symbols_checks_them_in_one_call(market: FakeExchange) -> None:
    assert streams("enable", "a010usdt", "A011USDT", "C001BTC") == "enabled 3 streams\n"
    assert info_calls(market) == 1
    assert streams("enable", "A010USDT", "A012USDT") == "enabled 1 stream (1 already enabled)\n"
    assert sorted(s.symbol for s in registry.enabled_streams()) == ["A010USDT", "A011USDT", "A012USDT", "C001BTC"]


def test_enable_several_names_each_one_that_is_unknown_or_not_trading_and_enables_none(market: FakeExchange) -> None:
    with pytest.raises(CommandError) as caught:
        streams("enable", "A010USDT", "DOGEUSDT", "A001USDT")
    assert "DOGEUSDT: not listed on the exchange" in str(caught.value)
    assert "A001USDT: not trading (status BREAK)" in str(caught.value)
    assert "A010USDT:" not in str(caught.value)  # it trades: not a problem
    assert not registry.stream_tasks().exists()
    assert info_calls(market) == 2  # the named call failed with -1121 (it does not say which): the whole list


def test_disable_several_and_all(market: FakeExchange) -> None:
    registry.enable_streams([stream_id(s, "trade") for s in USDT[:6]] + [stream_id(USDT[0], "aggTrade")])
    assert streams("disable", "A004USDT", "A005USDT") == "disabled 2 streams\n"
    with pytest.raises(CommandError, match="no stream a039usdt@trade"):
        streams("disable", "A000USDT", "A039USDT")
    assert streams("disable", "--all", "--channel", "aggTrade") == "disabled a000usdt@aggTrade\n"
    assert streams("disable", "--all") == "disabled 4 streams (3 already disabled)\n"
    assert streams("disable", "--all") == "disabled 0 streams (7 already disabled)\n"
    assert registry.enabled_streams() == []


@pytest.mark.parametrize(("args", "message"), [
    (("enable", "BTCUSDT", "--all"), "SYMBOLs or --all, not both"),
    (("list", "--all"), "--all is for enable and disable"),
    (("enable", "BTCUSDT", "--quote", "USDT"), "--quote goes with `streams enable --all`"),
    (("disable", "--all", "--quote", "USDT"), "--quote goes with `streams enable --all`"),
    (("check", "BTCUSDT"), "takes no SYMBOL"),
])
def test_bad_combinations_are_refused_by_name(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        streams(*args)


def test_check_marks_enabled_symbols_that_stop_trading_and_list_and_status_show_it(
        market: FakeExchange, caplog: pytest.LogCaptureFixture) -> None:
    registry.enable_streams([stream_id("A010USDT", "trade"), stream_id("A011USDT", "trade"),
                             stream_id("A011USDT", "aggTrade")])
    assert streams("check") == "2 enabled symbols checked: every one trades\n"
    market.set_status("A011USDT", "BREAK")
    assert streams("check") == "2 enabled symbols checked; 1 not trading (kept enabled): A011USDT (BREAK)\n"
    streams("check")
    assert caplog.text.count("A011USDT: the exchange says BREAK") == 1  # once per change, not per check
    assert streams("list") == ("a010usdt@trade\tenabled\na011usdt@aggTrade\tenabled\tnot trading (BREAK)\n"
                               "a011usdt@trade\tenabled\tnot trading (BREAK)\n")
    assert streams("status", "A011USDT", "--channel", "trade").startswith(
        "a011usdt@trade\tenabled\tnot trading (BREAK)\tno status")
    assert len(registry.enabled_streams()) == 3  # reported, kept enabled
    market.set_status("A011USDT", "TRADING")
    assert streams("check") == "2 enabled symbols checked: every one trades\n"
    assert "A011USDT: trading again" in caplog.text and listing.not_trading() == {}
    assert "not trading" not in streams("list")


def test_enable_all_skips_and_names_the_symbols_it_cannot_take_and_enables_the_rest(
        settings: Settings, clean_redis: None) -> None:
    # Seen: the exchange listed one name the collector's rules refuse (a non-ASCII one, as the real exchange
    # lists), and `enable --all` enabled nothing.
    with running_exchange(symbols={"BTCUSDT": 0.0, "ETHUSDT": 0.0, "币安人生USDT": 0.0}, seed=3) as ex:
        settings.BINANCE_REST_URL = ex.rest_url
        line = streams("enable", "--all", "--quote", "USDT")
    assert line.startswith("enabled 2 streams; 1 name the collector cannot take skipped: '币安人生USDT'"), line
    assert sorted(s.symbol for s in registry.enabled_streams()) == ["BTCUSDT", "ETHUSDT"]


def test_enable_all_asks_before_enabling_more_than_the_configured_count(
        settings: Settings, market: FakeExchange) -> None:
    # Seen: 3,001 streams enabled by one command, without a question.
    settings.STREAMS_ENABLE_CONFIRM_ABOVE = 10
    with pytest.raises(CommandError, match="would enable 37 streams, more than STREAMS_ENABLE_CONFIRM_ABOVE=10: "
                                           "run it again with --yes"):
        streams("enable", "--all", "--quote", "USDT")
    assert registry.enabled_streams() == []
    assert streams("enable", "--all", "--quote", "USDT", "--yes").startswith("enabled 37 streams")
