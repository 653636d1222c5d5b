"""The status page in a real headless Chromium: it fits a laptop's window and a phone's screen (wide tables
scroll in their own box, never the page), leads back to the live page, and says what each counter means."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from streams.binance.protocol import TRADE
from tests.web.test_live_page_browser import chromium, needs_browser, web, web_env  # noqa: F401 - web: a fixture
from workers.coverage import CALENDAR_DAYS, utc_today
from workers.deadletters import DeadLetter, dead_letter
from workers.keys import status_key, stream_id
from workers.models import DayCoverage
from workers.redis import sync_redis
from workers.registry import enable_stream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SYMBOLS = ("BTCUSDT", "ETHUSDT", "1000SHIBUSDT")
LAPTOP, PHONE = {"width": 1400, "height": 900}, {"width": 390, "height": 844}


def a_busy_service() -> None:
    """What a status page shows after a while: streams with every counter, a long error, a full calendar,
    dead letters with long data."""
    client = sync_redis()
    for symbol in SYMBOLS:
        enable_stream(symbol, TRADE)
        client.hset(status_key(stream_id(symbol, TRADE)), mapping={
            "state": "connected", "worker": "streams@collector-1:48213:8d9f1c2e-77aa-4b1e-9c55-0123456789ab",
            "updated_at": str(time.time()), "last_trade_age": "0.4", "trades_per_s": "1234.5", "messages": "987654",
            "reconnects": "12", "gaps_found": "3", "gaps_healed": "3", "missed": "0", "ids_back": "135",
            "parse_errors": "1", "errors": "7", "lag_ms": "45",
            "last_error": "REST: 429 Too Many Requests from https://api.binance.com/api/v3/historicalTrades?symbol="
                          f"{symbol}&fromId=123456789&limit=1000 (Retry-After 30 s); retried"})
    today = utc_today()
    DayCoverage.objects.bulk_create(
        DayCoverage(symbol=symbol, channel=TRADE, day=today - timedelta(days=n), trades=100_000, first_id=1,
                    last_id=100_000, verdict="complete" if n % 7 else "holes", holes=[] if n % 7 else [[5, 9]])
        for symbol in SYMBOLS for n in range(CALENDAR_DAYS))
    dead_letter(client, [DeadLetter("trade", "btcusdt@trade", "price does not fit the column: " + "9" * 40,
                                    '{"e":"trade","p":"' + "9" * 300 + '"}')])


def widths(browser: Any, url: str, viewport: dict[str, int], *, phone: bool = False) -> dict[str, int]:
    """The page's width and its window's; the streams table's and its scrolling box's."""
    page = browser.new_page(viewport=viewport, is_mobile=phone, has_touch=phone)
    page.goto(url + "/status/")
    page.wait_for_selector("table.streams tbody tr")
    found = page.evaluate("""() => ({page: document.documentElement.scrollWidth, window: window.innerWidth,
        table: document.querySelector("table.streams").scrollWidth,
        box: document.querySelector("table.streams").parentElement.clientWidth})""")
    page.close()
    return {name: int(value) for name, value in found.items()}


@needs_browser
def test_the_status_page_fits_a_laptop_and_a_phone_and_leads_back_to_the_live_page(web: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    a_busy_service()
    url, _ = web(web_env(STATUS_PUBLIC="1"))
    with chromium() as browser:
        laptop = widths(browser, url, LAPTOP)
        assert laptop["page"] <= laptop["window"] == 1400, f"{laptop['page']} px wide in a 1,400 px window"
        assert laptop["table"] <= laptop["box"], "on a laptop the streams table is whole, without scrolling"
        phone = widths(browser, url, PHONE, phone=True)
        assert phone["page"] <= phone["window"] == 390, f"{phone['page']} px wide on a 390 px phone"
        assert phone["table"] > phone["box"], "on a phone the table scrolls in its own box"

        page = browser.new_page(viewport=LAPTOP)
        page.goto(url + "/status/")
        # Every counter says what it means: a tooltip on its heading, and the legend below the table.
        headings = page.locator("table.streams thead th")
        assert headings.count() >= 14
        for index in range(headings.count()):
            heading = headings.nth(index)
            meaning = heading.locator("abbr").get_attribute("title") or ""
            assert len(meaning) > 15, f"{heading.inner_text()!r} does not say what it means"
            expect(page.locator("#legend")).to_contain_text(heading.inner_text())
        expect(page.locator("#legend")).to_contain_text("ids back")
        expect(page.locator("#legend")).to_contain_text("last error")
        expect(page.locator("table.streams tr.error").first).to_contain_text("429 Too Many Requests")
        page.click("text=live page")
        expect(page).to_have_url(url + "/")
        expect(page.locator("header a[href='/status/']")).to_be_visible()  # and back: STATUS_PUBLIC lets anyone
