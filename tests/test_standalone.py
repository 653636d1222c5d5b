"""`python -m streams.standalone`: prints the fake exchange's trades as JSON lines; clear errors otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime

import pytest

from streams.fake.exchange import running_exchange


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
