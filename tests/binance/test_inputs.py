"""Bad command-line input and bad endpoint URLs get a one-line error naming the value, never a traceback,
from the standalone client and from manage.py binance_websocket_client."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streams.binance.inputs import HTTP_SCHEMES, WS_SCHEMES, endpoint_url, seconds, whole_number
from tests.helpers import ROOT

# No exchange is needed: every one of these is refused before anything is reached. The URLs point at a
# closed port, so that a value that slipped through fails fast instead of waiting on the network.
CLOSED = {"BINANCE_WS_URL": "ws://127.0.0.1:9", "BINANCE_REST_URL": "http://127.0.0.1:9"}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, "LOG_LEVEL": "WARNING", **env},
                          capture_output=True, text=True, timeout=60, check=False)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["btcusdt", "trade", "²"], {}, "error: invalid limit '²': expected a whole number >= 0"),
        (["btcusdt", "trade", "١٢"], {}, "error: invalid limit '١٢': expected a whole number >= 0"),
        (["btcusdt", "trade", "5", "--wait-for-exchange", "nan"], {},
         "error: invalid --wait-for-exchange: 'nan' is not a finite number of seconds"),
        (["btcusdt", "trade", "5", "--wait-for-exchange", "inf"], {},
         "error: invalid --wait-for-exchange: 'inf' is not a finite number of seconds"),
        (["btcusdt", "trade", "5", "--wait-for-exchange=-1"], {},
         "error: invalid --wait-for-exchange: '-1' must be at least 0 seconds"),
        (["btcusdt"], {"BINANCE_WS_URL": "http://127.0.0.1:9443"},
         "error: BINANCE_WS_URL: 'http://127.0.0.1:9443' does not start with ws:// or wss://"),
        (["btcusdt"], {"BINANCE_WS_URL": "garbage"}, "error: BINANCE_WS_URL: 'garbage' does not start with ws:// or wss://"),
        (["btcusdt"], {"BINANCE_WS_URL": "ws://127.0.0.1:99999"},
         "error: BINANCE_WS_URL: 'ws://127.0.0.1:99999' is not a URL (ws:// or wss://...)"),
        (["btcusdt"], {"BINANCE_REST_URL": "ws://127.0.0.1:9444"},
         "error: BINANCE_REST_URL: 'ws://127.0.0.1:9444' does not start with http:// or https://"),
    ],
)
def test_the_standalone_client_refuses_bad_input_in_one_line(args: list[str], env: dict[str, str],
                                                              message: str) -> None:
    result = run(["-m", "streams.standalone", *args], {**CLOSED, **env})
    assert result.returncode == 2
    assert one_line(result) == message


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--wait-for-exchange", "nan"], {},
         "CommandError: --wait-for-exchange: 'nan' is not a finite number of seconds"),
        (["--wait-for-exchange", "inf"], {},
         "CommandError: --wait-for-exchange: 'inf' is not a finite number of seconds"),
        (["--batch-size", "10", "--flush-interval", "nan"], {},
         "CommandError: --flush-interval: 'nan' is not a finite number of seconds"),
        (["--batch-size", "10", "--flush-interval", "inf"], {},
         "CommandError: --flush-interval: 'inf' is not a finite number of seconds"),
        (["--flush-interval", "0"], {}, "CommandError: --flush-interval: '0' must be more than 0 seconds"),
        ([], {"BINANCE_WS_URL": "http://127.0.0.1:9443"},
         "error: BINANCE_WS_URL: 'http://127.0.0.1:9443' does not start with ws:// or wss://"),
        ([], {"BINANCE_WS_URL": "garbage"}, "error: BINANCE_WS_URL: 'garbage' does not start with ws:// or wss://"),
        ([], {"BINANCE_REST_URL": "127.0.0.1:9444"},
         "error: BINANCE_REST_URL: '127.0.0.1:9444' does not start with http:// or https://"),
    ],
)
def test_the_one_off_command_refuses_bad_input_in_one_line(args: list[str], env: dict[str, str],
                                                            message: str) -> None:
    result = run(["manage.py", "binance_websocket_client", *args], {"DEBUG": "1", **CLOSED, **env})
    assert result.returncode == 1
    assert one_line(result) == message


def test_a_unicode_digit_limit_is_refused_by_the_one_off_command_too() -> None:
    result = run(["manage.py", "binance_websocket_client", "--limit", "١٢"], {"DEBUG": "1", **CLOSED})
    assert result.returncode == 2
    assert "argument --limit: must be a whole number, got '١٢'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_strict_readers() -> None:
    assert whole_number("12") == 12 and whole_number("-5") == -5
    for text in ("²", "١٢", "1_000", " 5", "5.0", ""):
        with pytest.raises(ValueError, match="is not a whole number"):
            whole_number(text)
    assert seconds("0") == 0.0 and seconds("1.5") == 1.5 and seconds("1e3") == 1000.0
    for text in ("nan", "inf", "-inf", "1e400", "Infinity", "0x10", "١"):  # noqa: RUF001 (an Arabic-Indic 1)
        with pytest.raises(ValueError, match="is not a finite number of seconds"):
            seconds(text)
    assert endpoint_url("wss://stream.binance.com:9443", WS_SCHEMES) == "wss://stream.binance.com:9443"
    assert endpoint_url("http://127.0.0.1:9444/", HTTP_SCHEMES) == "http://127.0.0.1:9444/"
    for text in ("ws://", "ws:///x", "wss://user:pw@host", "ws://host/?x=1", "ws://host\n", "ws://h:0"):
        with pytest.raises(ValueError):
            endpoint_url(text, WS_SCHEMES)
