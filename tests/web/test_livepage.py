"""A live page's queue and the backlog the hub paces its frames by (web.live.page), without sockets."""

from __future__ import annotations

import asyncio

from web.live.page import Backlog, OutFrame, Page
from web.live.wire import ws_text_frame


async def never_closed(code: int, reason: str) -> None:
    raise AssertionError("not closed here")


def test_the_backlog_counts_only_pages_busy_with_the_newest_frame() -> None:
    backlog = Backlog()
    backlog.threshold = 1
    slow = backlog.started()  # behind before the next frame, and it stays so
    backlog.next_frame()
    fast = [backlog.started() for _ in range(3)]
    assert backlog.writing == 3  # the slow page is not waited for
    backlog.finished(fast[0])
    assert not backlog.low.is_set()
    backlog.finished(fast[1])
    assert backlog.low.is_set() and backlog.writing == 1
    backlog.finished(slow)  # done at last: it changes nothing for the newest frame
    assert backlog.writing == 1


async def test_a_page_takes_frames_up_to_its_limit_and_counts_in_the_backlog_until_written() -> None:
    written: list[str] = []
    gate = asyncio.Event()

    async def send(frame: str) -> None:
        await gate.wait()
        written.append(frame)

    backlog = Backlog()
    backlog.next_frame()
    page = Page("BTCUSDT", False, send, never_closed, limit=2, backlog=backlog)
    page.start(lambda _page, error: None)
    assert page.offer(OutFrame("a")) and backlog.writing == 1
    await asyncio.sleep(0)  # the writer takes "a" and waits on the socket
    assert page.offer(OutFrame("b")) and page.offer(OutFrame("c"))
    assert not page.offer(OutFrame("d"))  # two frames waiting: this page is too slow
    gate.set()
    while backlog.writing:
        await asyncio.sleep(0)
    assert written == ["a", "b", "c"]
    await page.stop()


async def test_a_page_written_directly_falls_back_to_its_queue_in_order_while_its_socket_is_full() -> None:
    wire: list[bytes] = []
    sent: list[str] = []
    writable = True

    def direct(data: bytes) -> bool:
        if writable:
            wire.append(data)
        return writable

    async def send(frame: str) -> None:
        sent.append(frame)

    backlog = Backlog()
    page = Page(None, True, send, never_closed, limit=5, backlog=backlog)
    page.start(lambda _page, error: None, direct)
    assert page.offer(OutFrame("one")) and wire == [ws_text_frame("one")] and backlog.writing == 0
    writable = False  # the server's backpressure: its buffer is full
    assert page.offer(OutFrame("two")) and backlog.writing == 1
    writable = True
    assert page.offer(OutFrame("three"))  # queued behind "two", never written ahead of it
    while backlog.writing:
        await asyncio.sleep(0)
    assert sent == ["two", "three"] and len(wire) == 1
    assert page.offer(OutFrame("four")) and wire[-1] == ws_text_frame("four")  # caught up: direct again
    await page.stop()


def test_a_text_frame_is_what_rfc_6455_says() -> None:
    assert ws_text_frame("hi") == b"\x81\x02hi"
    assert ws_text_frame("x" * 300)[:4] == b"\x81\x7e\x01\x2c"
    assert ws_text_frame("x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")
