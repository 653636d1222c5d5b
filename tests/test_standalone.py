"""`python -m streams.standalone`: prints the fake exchange's trades as JSON lines, in batches and promptly;
clear errors otherwise."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from datetime import datetime
from typing import IO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.binance.protocol import AGG_TRADE, MAX_ID, TRADE, Trade, datetime_from_exchange
from streams.fake.exchange import FakeExchange, running_exchange
from streams.standalone import json_lines
from tests.helpers import wait_for


def run_standalone(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.standalone", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, check=False)


def test_it_prints_the_trades_the_fake_exchange_made() -> None:
    with running_exchange(symbols={"ETHUSDT": 40.0}, seed=4) as ex:
        result = run_standalone("ethusdt", "trade", "12",
                                env={"BINANCE_WS_URL": ex.ws_url, "BINANCE_REST_URL": ex.rest_url})
        record = {t.trade_id: t for t in ex.record("ETHUSDT")}
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 12
    ids = [row["trade_id"] for row in rows]
    assert ids == list(range(ids[0], ids[0] + 12))
    for row in rows:
        made = record[row["trade_id"]]
        assert set(row) == {"ticker_symbol", "price", "volume", "trade_id", "trade_time", "event_time",
                            "is_market_maker"}
        assert (row["ticker_symbol"], row["price"], row["volume"], row["is_market_maker"]) == (
            "ETHUSDT", made.price_text, made.quantity_text, made.is_buyer_maker)
        assert datetime.fromisoformat(row["trade_time"]) == made.trade_time
        assert row["trade_time"].endswith("+00:00")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["btc usdt"], "invalid symbol 'btc usdt'"),
        (["btcusdt", "depth"], "invalid channel 'depth'"),
        (["btcusdt", "trade", "ten"], "invalid limit 'ten'"),
        (["nosuchcoin"], "unknown symbol 'NOSUCHCOIN'"),
    ],
)
def test_bad_arguments_get_a_one_line_error_and_a_non_zero_exit(args: list[str], message: str) -> None:
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=1) as ex:
        result = run_standalone(*args, env={"BINANCE_WS_URL": ex.ws_url, "BINANCE_REST_URL": ex.rest_url})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def seed_record(trade: Trade) -> dict[str, object]:
    """The line's fields as the seed wrote them, times through datetime.isoformat() (the reference)."""
    return {"ticker_symbol": trade.symbol, "price": trade.price_text, "volume": trade.quantity_text,
            "trade_id": trade.trade_id, "trade_time": datetime_from_exchange(trade.trade_ts).isoformat(),
            "event_time": datetime_from_exchange(trade.event_ts).isoformat(), "is_market_maker": trade.is_buyer_maker}


def seed_line(trade: Trade) -> bytes:
    return json.dumps(seed_record(trade), separators=(",", ":")).encode() + b"\n"


def digits(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=min_size, max_size=max_size)


timestamps = st.one_of(st.integers(min_value=0, max_value=10**14 - 1),  # milliseconds
                       st.integers(min_value=10**14, max_value=10**17 - 1),  # microseconds
                       st.sampled_from([0, 1000, 1723161255000, 1723161255000000, 10**14, 10**17 - 1]))
trades = st.builds(
    Trade, symbol=st.text(alphabet="ABCXYZ019", min_size=2, max_size=20), channel=st.sampled_from([TRADE, AGG_TRADE]),
    trade_id=st.integers(min_value=0, max_value=MAX_ID),
    price_text=st.tuples(digits(1, 20), digits(0, 8)).map(".".join),
    quantity_text=st.tuples(digits(1, 20), st.sampled_from(["", "."]), digits(0, 8)).map("".join),
    trade_ts=timestamps, event_ts=timestamps, is_buyer_maker=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(trades, max_size=20))
def test_its_lines_are_the_seeds_json_exactly(batch: list[Trade]) -> None:
    assert json_lines(batch) == b"".join(seed_line(trade) for trade in batch)


class Lines:
    """The lines a child process writes to a pipe, read with a deadline (never a sleep)."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.fd, self.pending = pipe.fileno(), b""
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.fd, selectors.EVENT_READ)

    def read(self, count: int, timeout: float = 30.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while self.pending.count(b"\n") < count:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                raise AssertionError(f"{count} lines not written within {timeout} s; have {self.pending!r:.300}")
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                raise AssertionError(f"the pipe closed after {self.pending!r:.300}")
            self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n", count)
        return [line + b"\n" for line in lines]


def start_standalone(ex: FakeExchange, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BINANCE_WS_URL": ex.ws_url, "BINANCE_REST_URL": ex.rest_url}
    env.pop("PYTHONUNBUFFERED", None)  # stdout buffered, as it usually is: the client must flush by itself
    child = subprocess.Popen([sys.executable, "-m", "streams.standalone", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
    wait_for(lambda: ex.active_connections(f"{args[0]}@{args[1]}") == 1, timeout=30)
    return child


def test_a_quiet_markets_trades_reach_a_pipe_one_at_a_time_as_they_happen() -> None:
    with running_exchange(symbols={"ETHUSDT": 0.0}, seed=5) as ex:
        child = start_standalone(ex, "ethusdt", "trade", "0")
        try:
            assert child.stdout is not None
            lines = Lines(child.stdout)
            for _ in range(3):  # each trade is flushed on its own: nothing else is ready to wait for
                (made,) = ex.make_trades("ETHUSDT", 1)
                assert lines.read(1) == [seed_line(made)]
        finally:
            child.send_signal(signal.SIGTERM)
            _, stderr = child.communicate(timeout=30)
    assert child.returncode == 0, stderr
    assert lines.pending == b""


def test_a_burst_is_printed_whole_in_order_and_stops_at_the_limit() -> None:
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=6) as ex:
        child = start_standalone(ex, "btcusdt", "trade", "2500")
        made = ex.burst("BTCUSDT", 3000)
        stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    assert stdout == b"".join(seed_line(trade) for trade in made[:2500])
