"""The live feed on the web process as the Procfile runs it (uvicorn and its WebSocket options), over real
sockets: the live hub's limits at the server's edge."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.typing import Origin
from websockets.uri import parse_uri

from benchmarks.webprocess import free_port, start_web, wait_listening
from streams.binance.protocol import TRADE, Trade
from streams.broadcast import ALL_TRADES_GROUP, Broadcaster
from tests.helpers import wait_for
from web.live.state import read_live_stats
from web.live.wire import CLOSE_SERVER_FULL, CLOSE_TOO_BIG, CLOSE_TOO_SLOW
from workers.redis import sync_redis

pytestmark = pytest.mark.slow
GROUP_KEY = f"asgi:group:{ALL_TRADES_GROUP}"
ORIGIN = Origin("http://127.0.0.1")


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", "LOG_LEVEL": "WARNING",
            "REDIS_URL": settings.REDIS_URL, "DATABASE_URL": "sqlite:///:memory:",
            "ALLOWED_HOSTS": "127.0.0.1,localhost", "LIVE_STATE_INTERVAL": "0.2", **extra}


@pytest.fixture
def server(clean_redis: None, request: pytest.FixtureRequest) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The Procfile's web process, with the environment `with_env` gives."""
    port = free_port()
    process = start_web(port, env(**getattr(request, "param", {})))
    try:
        wait_listening(port, process)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def ws_url(port: int, path: str = "/ws/trades/") -> str:
    return f"ws://127.0.0.1:{port}{path}"


def batch(first: int, count: int) -> list[Trade]:
    return [Trade("BTCUSDT", TRADE, first + i, "61000.12000000", "0.00100000", 1723161255342, 1723161255343, False)
            for i in range(count)]


async def broadcast(trades: list[Trade]) -> None:
    layer = RedisChannelLayer(hosts=[{"address": settings.REDIS_URL, "socket_timeout": None}])
    broadcaster = Broadcaster([ALL_TRADES_GROUP], per_symbol=True, layer=layer)
    broadcaster.start()
    broadcaster.offer(trades)
    await broadcaster.close()
    await layer.close_pools()


def stats() -> dict[str, int]:
    """The web process's live-feed counters, as it writes them to Redis every heartbeat."""
    everything = read_live_stats()
    return next(iter(everything.values())) if everything else {}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def with_env(**extra: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("server", [extra], indirect=True, ids=[",".join(extra)])


async def test_frames_over_a_few_kb_are_refused_before_they_are_read(server: Any) -> None:
    # Before: uvicorn's 16 MiB default; 8 sockets sending 16 MiB frames took the web process from 143 to 424 MB.
    port, process = server
    before = rss_kib(process.pid)
    for _ in range(8):
        async with connect(ws_url(port), origin=ORIGIN, max_size=None) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.send(b"x" * 16 * 1024 * 1024)
                await ws.recv()
                await ws.recv()
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_TOO_BIG
    assert rss_kib(process.pid) - before < 20 * 1024  # KiB: nothing near 8 x 16 MiB was read


@with_env(LIVE_MAX_CONNECTIONS="3")
async def test_pages_beyond_the_cap_are_refused_cleanly_with_a_reason(server: Any) -> None:
    port, _ = server
    pages = [await connect(ws_url(port), origin=ORIGIN) for _ in range(3)]
    try:
        async with connect(ws_url(port), origin=ORIGIN) as extra:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await extra.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_SERVER_FULL
            assert "try again later" in closed.value.rcvd.reason
        wait_for(lambda: stats().get("refused") == 1, timeout=10)
    finally:
        for page in pages:
            await page.close()


class RawPage:
    """A page on a plain socket that reads only when told to: a browser tab that stopped reading."""

    def __init__(self, port: int) -> None:
        self.protocol = ClientProtocol(parse_uri(ws_url(port)), origin=ORIGIN,
                                       max_size=None)  # the frames that piled up are large
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server fills it fast
        self.sock.connect(("127.0.0.1", port))
        self.protocol.send_request(self.protocol.connect())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
        while self.protocol.handshake_exc is None and not self._read_some():
            pass

    def _read_some(self) -> bool:
        """Read what is there; True once the handshake is complete."""
        data = self.sock.recv(65536)
        self.protocol.receive_data(data) if data else self.protocol.receive_eof()
        return any(not isinstance(event, Frame) for event in self.protocol.events_received()) or not data

    def read_until_closed(self) -> tuple[int | None, str]:
        """Read everything the server wrote, up to its close frame: (code, reason)."""
        self.sock.settimeout(30)
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                self.protocol.receive_eof()
                break
            self.protocol.receive_data(data)
            if any(isinstance(e, Frame) and e.opcode == Opcode.CLOSE for e in self.protocol.events_received()):
                break
        close = self.protocol.close_rcvd
        return (close.code, close.reason) if close else (None, "")


@with_env(LIVE_SEND_QUEUE="3")
async def test_a_page_that_stops_reading_is_dropped_with_a_reason_while_another_gets_everything(server: Any) -> None:
    # Before: a slow page's layer channel filled; the trades it missed were dropped silently and it stayed
    # a member, while the layer wrote every batch for it into Redis all the same.
    port, _ = server
    slow = RawPage(port)
    received = 0
    sent = 0
    async with connect(ws_url(port, "/ws/trades/btcusdt/"), origin=ORIGIN,
                       max_size=None) as fast:

        async def read_fast() -> None:
            nonlocal received
            async for message in fast:
                frame = orjson.loads(message)
                if isinstance(frame, list):
                    received += len(frame)

        reader = asyncio.create_task(read_fast())
        try:
            deadline = asyncio.get_running_loop().time() + 90
            while not stats().get("dropped_slow"):  # 2,000 trades (~300 KB) a batch until the server gives up
                assert asyncio.get_running_loop().time() < deadline, "the page that reads nothing was never dropped"
                await broadcast(batch(sent + 1, 2000))
                sent += 2000
            code, reason = await asyncio.to_thread(slow.read_until_closed)  # it reads again: the reason is there
            assert (code, reason) == (CLOSE_TOO_SLOW, "too slow: 3 frames behind; reconnect")
            await broadcast(batch(sent + 1, 10))
            sent += 10
            deadline = asyncio.get_running_loop().time() + 30
            while received < sent:
                assert asyncio.get_running_loop().time() < deadline, f"the fast page got {received} of {sent}"
                await asyncio.sleep(0.05)
            assert received == sent and stats()["dropped_slow"] == 1
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            slow.sock.close()


async def test_fifty_pages_and_abrupt_ends_leave_one_member_and_a_stop_leaves_none(server: Any) -> None:
    # Before: one group member per page, and a page whose disconnect did not run stayed one for 24 h.
    port, process = server
    pages = [await connect(ws_url(port, "/ws/trades/btcusdt/" if i % 2 else "/ws/trades/"),
                           origin=ORIGIN) for i in range(50)]
    wait_for(lambda: stats().get("pages") == 50, timeout=10)
    assert sync_redis().zcard(GROUP_KEY) == 1  # the process, whatever its pages
    for i, page in enumerate(pages):
        if i % 2:
            await page.close()
        else:  # the TCP connection reset, no close handshake (a tab killed, a network gone)
            raw = page.transport.get_extra_info("socket")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            page.transport.abort()
    wait_for(lambda: stats().get("pages") == 0, timeout=10)
    assert sync_redis().zcard(GROUP_KEY) == 1
    process.send_signal(signal.SIGTERM)  # uvicorn's lifespan shutdown: the hub leaves the group
    process.wait(timeout=30)
    assert sync_redis().zcard(GROUP_KEY) == 0
