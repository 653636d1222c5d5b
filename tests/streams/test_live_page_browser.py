"""The live page in a real headless Chromium: trades appear, the chart moves, a dropped stream shows."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from streams.binance.protocol import TRADE, Trade
from streams.broadcast import ALL_TRADES_GROUP, Broadcaster
from streams.storage import store_trades
from tests.helpers import ROOT, database_url, wait_for
from workers.keys import status_key
from workers.redis import sync_redis
from workers.registry import enable_stream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium keeps trying to reach Google's hosts, which this network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def make(first: int, count: int) -> list[Trade]:
    return [Trade("BTCUSDT", TRADE, first + i, f"{61000 + i}.50000000", "0.01000000", 1723161255342 + first + i,
                  1723161255350 + first + i, i % 2 == 0) for i in range(count)]


@pytest.fixture
def server(clean_redis: None) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", "LOG_LEVEL": "WARNING",
           "DATABASE_URL": database_url(), "REDIS_URL": settings.REDIS_URL, "ALLOWED_HOSTS": "127.0.0.1,localhost"}
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1",
                                "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port), timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def broadcast(trades: list[Trade]) -> None:
    async def send() -> None:
        layer = RedisChannelLayer(hosts=[{"address": settings.REDIS_URL, "socket_timeout": None}])
        broadcaster = Broadcaster([ALL_TRADES_GROUP], per_symbol=True, layer=layer)
        broadcaster.start()
        broadcaster.offer(trades)
        await broadcaster.close()

    # Playwright's sync API runs an event loop on this thread: send from a thread of its own.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, send()).result(timeout=30)


def write_status(state: str, frame_age: float) -> None:
    now = time.time()
    sync_redis().hset(status_key("btcusdt@trade"), mapping={
        "state": state, "worker": "w1", "updated_at": str(now), "last_frame_at": str(now - frame_age)})


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_trades_appear_the_chart_moves_and_a_dropped_stream_shows(server: str, settings: Any) -> None:
    from playwright.sync_api import expect, sync_playwright

    enable_stream("BTCUSDT", TRADE)
    store_trades(make(1000, 5))
    write_status("connected", frame_age=0)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server + "/")
            expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=20_000)
            expect(page.locator("#tape tbody tr")).to_have_count(5)
            expect(page.locator("#chart")).to_have_attribute("data-points", "5")
            expect(page.locator("#stream-state")).to_have_attribute("data-state", "connected", timeout=20_000)

            broadcast(make(1005, 3))  # live trades, through the real channel layer
            expect(page.locator("#tape tbody tr").first).to_have_attribute("data-trade-id", "1007", timeout=20_000)
            expect(page.locator("#tape tbody tr")).to_have_count(8)
            expect(page.locator("#chart")).to_have_attribute("data-points", "8")
            expect(page.locator("#chart")).to_have_attribute("data-last", "61002.5")
            newest = page.locator("#tape tbody tr").first  # trade 1007: the buyer was the maker, a sell
            assert newest.get_attribute("class") == "sell" and newest.locator("td.side").inner_text() == "sell"
            assert page.locator("#tape tbody tr").nth(1).get_attribute("class") == "buy"

            write_status("connected", frame_age=600)  # the stream's socket went silent: stalled
            expect(page.locator("#stream-state")).to_have_attribute("data-state", "stalled", timeout=20_000)
        finally:
            browser.close()
