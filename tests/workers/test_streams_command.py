"""`manage.py streams enable|disable|list|status`: output, exit codes, and clear errors for bad input."""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from streams.fake.exchange import FakeExchange
from workers import registry
from workers.keys import status_key
from workers.redis import sync_redis
from workers.status import StreamStatus, write_status_now

pytestmark = pytest.mark.django_db

# Symbols no other test reports a status for (Redis is shared between test modules).
QUIET = "ZQCMDUSDT"


@pytest.fixture(autouse=True)
def exchange_settings(settings, exchange: FakeExchange) -> FakeExchange:
    settings.BINANCE_REST_URL = exchange.rest_url
    return exchange


@pytest.fixture
def live_status() -> Iterator[str]:
    """A status report for zqcmdusdt@trade, as a running stream task writes it."""
    sid = f"{QUIET.lower()}@trade"
    key = status_key(sid)
    write_status_now(sync_redis(), sid, StreamStatus(state="connected", worker="w1", trades_per_s=12.5,
                                                     gaps_healed=2, last_trade_age=100.0), ttl=60)
    yield sid
    sync_redis().delete(key)


def streams(*args: str) -> str:
    out = StringIO()
    call_command("streams", *args, stdout=out)
    return out.getvalue()


def test_enable_creates_a_stream_for_a_listed_symbol() -> None:
    assert streams("enable", "btcusdt") == "enabled btcusdt@trade\n"
    assert streams("enable", "ETHUSDT", "--channel", "aggtrade") == "enabled ethusdt@aggTrade\n"
    assert sorted(registry.enabled_streams()) == [("BTCUSDT", "trade"), ("ETHUSDT", "aggTrade")]


def test_enable_refuses_an_unknown_symbol_by_name() -> None:
    with pytest.raises(CommandError, match=r"DOGEUSDT.*not listed"):
        streams("enable", "DOGEUSDT")
    assert not registry.stream_tasks().exists()


def test_enable_says_when_the_exchange_cannot_be_reached(settings) -> None:
    settings.BINANCE_REST_URL = "http://127.0.0.1:9"
    with pytest.raises(CommandError, match=r"cannot enable BTCUSDT trade: .*cannot reach"):
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
