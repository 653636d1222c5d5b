"""`manage.py fake_exchange`: the random-fault options reach the exchange, and a bad one is named."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from django.core.management import CommandError, call_command
from websockets.asyncio.client import connect

from tests.helpers import ROOT


@pytest.mark.parametrize("option", ["--replay-rate", "--rest-garbage-rate"])
def test_a_negative_rate_is_refused_by_name(option: str) -> None:
    name = option.removeprefix("--").removesuffix("-rate").replace("-", "_")
    with pytest.raises(CommandError, match=f"fault rate {name}=-1.0 must be a number >= 0"):
        call_command("fake_exchange", option, "-1")


async def test_the_replay_and_rest_garbage_rates_are_applied() -> None:
    env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", "PYTHONUNBUFFERED": "1"}
    args = ["--ws-port", "0", "--rest-port", "0", "--symbols", "btcusdt:100"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "manage.py", "fake_exchange", *args, "--replay-rate", "20", "--rest-garbage-rate", "20",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        urls: dict[str, str] = {}
        async with asyncio.timeout(30):
            while len(urls) < 2:
                line = (await process.stdout.readline()).decode()
                assert line, "the command ended before it listened"
                key, _, value = line.strip().partition("=")
                if key in ("BINANCE_WS_URL", "BINANCE_REST_URL"):
                    urls[key] = value
        async with httpx.AsyncClient(base_url=urls["BINANCE_REST_URL"]) as http:
            response = await http.get("/api/v3/trades", params={"symbol": "BTCUSDT"})
            async with asyncio.timeout(5):
                while response.headers["Content-Type"] != "text/html":  # 2 per tick of 0.1 s: soon garbage
                    response = await http.get("/api/v3/trades", params={"symbol": "BTCUSDT"})
            async with (
                connect(f"{urls['BINANCE_WS_URL']}/ws/btcusdt@trade", max_queue=None) as ws,  # reads on while closing
                asyncio.timeout(5),
            ):
                highest = orjson.loads(await ws.recv())["t"]
                while (trade_id := orjson.loads(await ws.recv())["t"]) > highest:  # until the ids go back
                    highest = trade_id
            faults = (await http.get("/fake/stats")).json()["faults"]
        assert faults["replay"] >= 1 and faults["rest_garbage"] >= 1
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0


def test_history_days_and_history_from_are_not_taken_together() -> None:
    with pytest.raises(CommandError, match="--history-days: 1 to 3660 days, and not with --history-from"):
        call_command("fake_exchange", "--history-days", "3", "--history-from", "2026-11-01")
    with pytest.raises(CommandError, match="history-from"):
        call_command("fake_exchange", "--history-from", "November")


async def test_the_history_options_give_an_archive_of_past_days() -> None:
    env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", "PYTHONUNBUFFERED": "1"}
    args = ["--ws-port", "0", "--rest-port", "0", "--symbols", "btcusdt:0", "--history-days", "3",
            "--history-rate", "0.01"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "manage.py", "fake_exchange", *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            while not (line := (await process.stdout.readline()).decode()).startswith("BINANCE_REST_URL="):
                assert line, "the command ended before it listened"
        day = (datetime.now(UTC) - timedelta(days=2)).date()
        async with httpx.AsyncClient(base_url=line.strip().partition("=")[2]) as http:
            path = f"/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-{day}.zip"
            assert (await http.get(path)).status_code == 200
            assert (await http.get(path + ".CHECKSUM")).text.endswith(f"  BTCUSDT-trades-{day}.zip\n")
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0
