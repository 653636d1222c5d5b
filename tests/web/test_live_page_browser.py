"""The live page in a real headless Chromium, served by the web process as the Procfile runs it: candles
appear and move, the volume is the trades', the stream's state shows, and a dead feed is said."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from benchmarks.webprocess import ROOT, free_port, start_web, wait_listening
from streams.binance.protocol import TRADE, Trade
from streams.binance.streamid import StreamId
from streams.broadcast import ALL_TRADES_GROUP, Broadcaster
from streams.fake.proxy import TcpProxy, tcp_proxy
from streams.storage import store_trades
from tests.helpers import database_url
from workers.keys import status_key
from workers.redis import sync_redis
from workers.registry import enable_stream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium keeps trying to reach Google's hosts, which this network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
LIBRARY = ROOT / "web/static/web/vendor/lightweight-charts.standalone.production.js"
needs_browser = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and LIBRARY.exists()),
    reason="Debian's chromium (.ci/run installs it) or the chart library (make setup: npm ci) is missing")
# Today at 01:00 UTC (whatever the time now): the day's first trade is the first one sent.
DAY_START_MS = int(datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0).timestamp() * 1000)


def trade(trade_id: int, at_ms: int, price: str, quantity: str, maker: bool = False) -> Trade:
    return Trade("BTCUSDT", TRADE, trade_id, price, quantity, at_ms, at_ms + 5, maker)


def web_env(redis_url: str | None = None, **extra: str) -> dict[str, str]:
    return {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", "LOG_LEVEL": "WARNING",
            "DATABASE_URL": database_url(), "REDIS_URL": redis_url or settings.REDIS_URL,
            "ALLOWED_HOSTS": "127.0.0.1,localhost", "LIVE_STATE_INTERVAL": "0.5", **extra}


@pytest.fixture
def web(clean_redis: None) -> Iterator[Any]:
    """Starts the web process (Procfile) with the given environment; stopped at the end."""
    started = []

    def start(env: dict[str, str]) -> tuple[str, Any]:
        port = free_port()
        process = start_web(port, env)
        started.append(process)
        wait_listening(port, process)
        return f"http://127.0.0.1:{port}", process

    yield start
    for process in started:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        process.wait(timeout=30)


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


def write_status(state: str, frame_age: float, trades_per_s: float = 3.5, lag_ms: int = 12) -> None:
    now = time.time()
    sync_redis().hset(status_key(StreamId.parse("btcusdt@trade")), mapping={
        "state": state, "worker": "w1", "updated_at": str(now), "last_frame_at": str(now - frame_age),
        "last_frame_age": str(frame_age), "trades_per_s": str(trades_per_s), "lag_ms": str(lag_ms)})


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, closed at the end of the block."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def total(*quantities: str) -> str:
    return f"{sum(Decimal(q) for q in quantities):.8f}"


@needs_browser
def test_candles_appear_and_move_the_volume_is_the_trades_and_the_state_shows(web: Any) -> None:
    from playwright.sync_api import expect

    url, _ = web(web_env())
    enable_stream("BTCUSDT", TRADE)
    second = DAY_START_MS // 1000  # candles of 1 s start here
    stored = [trade(1, DAY_START_MS + 100, "100.00000000", "0.01000000"),
              trade(2, DAY_START_MS + 600, "101.50000000", "0.02000000", maker=True),
              trade(3, DAY_START_MS + 1200, "99.00000000", "0.03000000"),
              trade(4, DAY_START_MS + 1700, "102.00000000", "0.00500000")]
    store_trades(stored)
    write_status("connected", frame_age=0)
    with chromium() as browser:
        page = browser.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(url + "/")
        chart = page.locator("#chart")
        expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=20_000)
        expect(page.locator("#tape tbody tr")).to_have_count(4)
        expect(page.locator("#chart canvas").first).to_be_visible()  # the library drew the chart
        # The state, pushed over the socket: no polling of /api/streams/ any more.
        expect(page.locator("#stream-state")).to_have_attribute("data-state", "connected", timeout=20_000)
        expect(page.locator("#stream-state")).to_contain_text("3.5 trades/s")
        expect(page.locator("#stream-state")).to_contain_text("lag 12 ms")
        expect(page.locator("#last-price")).to_have_text("102")
        expect(page.locator("#day-change")).to_have_attribute("data-change", "2.00")  # 102 against 100

        page.click("#intervals button[data-seconds='1']")
        expect(chart).to_have_attribute("data-interval", "1")
        expect(chart).to_have_attribute("data-bars", "2")
        expect(chart).to_have_attribute("data-last-time", str(second + 1))
        expect(chart).to_have_attribute("data-last-volume", total("0.03", "0.005"))

        # Live trades through the real channel layer: a new candle appears, then it moves.
        broadcast([trade(5, DAY_START_MS + 2100, "103.00000000", "0.10000000")])
        expect(chart).to_have_attribute("data-bars", "3", timeout=20_000)
        expect(chart).to_have_attribute("data-last-close", "103")
        broadcast([trade(6, DAY_START_MS + 2400, "105.50000000", "0.25000000", maker=True),
                   trade(7, DAY_START_MS + 2900, "104.00000000", "0.00000001")])
        expect(chart).to_have_attribute("data-last-high", "105.5", timeout=20_000)
        expect(chart).to_have_attribute("data-last-close", "104")
        expect(chart).to_have_attribute("data-last-open", "103")
        expect(chart).to_have_attribute("data-last-low", "103")
        expect(chart).to_have_attribute("data-last-volume", total("0.1", "0.25", "0.00000001"))
        expect(chart).to_have_attribute("data-bars", "3")
        expect(page.locator("#tape tbody tr").first).to_have_attribute("data-trade-id", "7")
        assert page.locator("#tape tbody tr").nth(1).get_attribute("class") == "sell"  # 6: the buyer made it
        expect(page.locator("#last-price")).to_have_text("104")
        expect(page.locator("#day-change")).to_have_attribute("data-change", "4.00")

        page.click("#intervals button[data-seconds='60']")  # one minute holds every trade sent
        expect(chart).to_have_attribute("data-bars", "1")
        expect(chart).to_have_attribute("data-last-trades", "7")
        expect(chart).to_have_attribute("data-last-volume",
                                         total("0.01", "0.02", "0.03", "0.005", "0.1", "0.25", "0.00000001"))
        expect(chart).to_have_attribute("data-last-open", "100")
        page.click("#intervals button[data-seconds='300']")
        expect(chart).to_have_attribute("data-interval", "300")
        expect(chart).to_have_attribute("data-last-trades", "7")

        write_status("connected", frame_age=600)  # the stream's socket went silent: stalled
        expect(page.locator("#stream-state")).to_have_attribute("data-state", "stalled", timeout=20_000)
        # Anonymous visitors are not shown the completeness report (staff only): the page goes on.
        expect(page.locator("#completeness")).to_have_attribute("data-verdict", "unavailable")
        assert not [u for u in requests if "/api/streams/" in u], "the page polled /api/streams/"
        assert all(u.startswith(url) for u in requests), "something was loaded from elsewhere"

        # For staff the coverage endpoint answers (its contract: the history issue's day entries).
        today = datetime.now(UTC).date().isoformat()
        day = {"symbol": "BTCUSDT", "channel": "trade", "day": today, "trades": 1234, "first_id": 1,
               "last_id": 1240, "holes": [[5, 7], [100, 101]], "archive_count": None, "verdict": "holes"}
        staff = browser.new_page()
        staff.route("**/api/coverage/*", lambda route: route.fulfill(json={"days": [day]}))
        staff.goto(url + "/")
        expect(staff.locator("#completeness")).to_have_attribute("data-verdict", "holes", timeout=20_000)
        expect(staff.locator("#completeness")).to_have_text("today: 2 holes (1,234 trades)")


@needs_browser
def test_a_web_process_that_stops_answering_is_shown_and_the_page_comes_back(web: Any) -> None:
    # Before: the page said "live" for as long as its socket stayed open, whatever came through it.
    from playwright.sync_api import expect

    url, process = web(web_env())
    enable_stream("BTCUSDT", TRADE)
    write_status("connected", frame_age=0)
    with chromium() as browser:
        page = browser.new_page()
        page.goto(url + "/")
        connection = page.locator("#connection")
        expect(connection).to_have_attribute("data-state", "open", timeout=20_000)
        process.send_signal(signal.SIGSTOP)  # the socket stays open; nothing comes through it
        expect(connection).to_have_attribute("data-state", "silent", timeout=20_000)
        expect(connection).to_contain_text("from the server")  # and it stays so while it cannot reconnect
        expect(connection).to_contain_text("no answer from the server", timeout=20_000)
        expect(connection).to_have_attribute("data-state", "silent")
        process.send_signal(signal.SIGCONT)
        expect(connection).to_have_attribute("data-state", "open", timeout=40_000)
        broadcast([trade(1, DAY_START_MS, "100.00000000", "1.00000000")])
        expect(page.locator("#tape tbody tr").first).to_have_attribute("data-trade-id", "1", timeout=20_000)


@needs_browser
def test_a_feed_cut_off_from_redis_is_shown_and_its_return_too(web: Any) -> None:
    from playwright.sync_api import expect

    proxy: TcpProxy
    with tcp_proxy("127.0.0.1", 6379) as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}/{settings.REDIS_URL.rsplit('/', 1)[-1]}"
        url, _ = web(web_env(proxied, LIVE_GROUP_EXPIRY="3"))  # renewals (and probes) every second
        enable_stream("BTCUSDT", TRADE)
        write_status("connected", frame_age=0)
        with chromium() as browser:
            page = browser.new_page()
            page.goto(url + "/")
            connection = page.locator("#connection")
            expect(connection).to_have_attribute("data-state", "open", timeout=20_000)
            proxy.freeze()  # the web process's Redis goes silent (the browser's socket is fine)
            expect(connection).to_have_attribute("data-state", "interrupted", timeout=30_000)
            expect(connection).to_contain_text("feed interrupted")
            proxy.restore()
            expect(connection).to_have_attribute("data-state", "open", timeout=30_000)
            broadcast([trade(1, DAY_START_MS, "100.00000000", "1.00000000")])
            expect(page.locator("#tape tbody tr").first).to_have_attribute("data-trade-id", "1", timeout=20_000)


@needs_browser
def test_the_chart_opens_with_the_days_candles_from_the_dataset_then_moves_with_live_trades(web: Any) -> None:
    # Before: the page opened with the latest LIVE_PAGE_TRADES stored trades, so after a day of history the
    # one-minute chart showed the last candle or two. Three trades a minute for ten minutes, three trades kept
    # for the tape: ten one-minute candles, two of five minutes.
    from playwright.sync_api import expect

    url, _ = web(web_env(LIVE_PAGE_TRADES="3"))
    enable_stream("BTCUSDT", TRADE)
    stored = [trade(1 + 3 * m + k, DAY_START_MS + m * 60_000 + k * 1000, f"{100 + m + k}.00000000", "0.10000000")
              for m in range(10) for k in range(3)]
    store_trades(stored)
    write_status("connected", frame_age=0)
    with chromium() as browser:
        page = browser.new_page()
        page.goto(url + "/")
        chart = page.locator("#chart")
        expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=20_000)
        expect(chart).to_have_attribute("data-interval", "60")
        expect(chart).to_have_attribute("data-bars", "10", timeout=20_000)
        expect(chart).to_have_attribute("data-last-trades", "3")
        expect(chart).to_have_attribute("data-last-volume", total("0.1", "0.1", "0.1"))
        expect(page.locator("#tape tbody tr")).to_have_count(3)  # the latest trades, for the tape
        expect(page.locator("#day-change")).to_have_attribute("data-change", "11.00")  # 111 against 100
        # Live trades: one the opening counts already (30) is skipped, a new one (31) moves the last candle.
        minute_nine = DAY_START_MS + 9 * 60_000
        broadcast([stored[-1], trade(31, minute_nine + 40_000, "120.00000000", "0.00000001")])
        expect(chart).to_have_attribute("data-last-trades", "4", timeout=20_000)
        expect(chart).to_have_attribute("data-last-high", "120")
        expect(chart).to_have_attribute("data-last-volume", total("0.1", "0.1", "0.1", "0.00000001"))
        expect(chart).to_have_attribute("data-bars", "10")
        page.click("#intervals button[data-seconds='300']")
        expect(chart).to_have_attribute("data-bars", "2")
        expect(chart).to_have_attribute("data-last-trades", "16")
        expect(chart).to_have_attribute("data-last-open", "105")
