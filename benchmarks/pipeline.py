"""Benchmarks of the whole pipeline: fake exchange -> stream runner -> Redis buffer -> flush -> PostgreSQL.

Runs in this process: the stream tasks (the body of `run_stream`: a thread each, hosted by one runtime on
one event loop, as in a streams worker), the flush loop on a thread, a scratch PostgreSQL database made the
default one, the Redis at REDIS_URL (keys under `collector:` are deleted before and after: do not run it
against a production Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from django.db import connections

from benchmarks.client import Result, exchange_process
from benchmarks.storage import postgres_url
from streams.binance.protocol import TRADE, Trade, datetime_from_exchange
from streams.models import PriceUpdate
from streams.storage import StoreResult, store_trades
from workers.buffer import flush_all
from workers.keys import PREFIX, stream_id
from workers.redis import sync_redis
from workers.runtime import Runtime, ShutdownSignal
from workers.status import read_status


@contextlib.contextmanager
def scratch_default_database() -> Iterator[None]:
    """Point the default alias at a new, migrated PostgreSQL database for the run; drop it afterwards."""
    import dj_database_url

    saved = connections.settings["default"]
    connections["default"].close()
    config = dj_database_url.parse(postgres_url())
    config.setdefault("TEST", {})
    connections.settings["default"] = connections.configure_settings({"default": config})["default"]
    del connections["default"]
    creation = connections["default"].creation
    old_name = connections["default"].settings_dict["NAME"]
    creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield
    finally:
        connections["default"].close()
        creation.destroy_test_db(old_name, verbosity=0)
        connections.settings["default"] = saved
        del connections["default"]


def _clean_redis() -> None:
    client = sync_redis()
    for key in client.scan_iter(match=f"{PREFIX}:*", count=1000):
        client.delete(key)


def _connected(symbol: str) -> bool:
    return getattr(read_status(stream_id(symbol, TRADE)), "state", None) == "connected"


class _Flusher(threading.Thread):
    """Flushes continuously; records event time -> commit latency of every trade it stores."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="bench-flush")
        self.stop = threading.Event()
        self.window_start_ms = float("inf")
        self.window_latencies_ms: list[float] = []

    def _store(self, trades: Sequence[Trade], using: str) -> StoreResult:
        result = store_trades(trades, using)
        now_ms = time.time() * 1000
        start = self.window_start_ms
        events_ms = (datetime_from_exchange(t.event_ts).timestamp() * 1000 for t in trades)  # ms or µs: either
        self.window_latencies_ms.extend(now_ms - event_ms for event_ms in events_ms if event_ms >= start)
        return result

    def run(self) -> None:
        while not self.stop.is_set():
            flushed = flush_all(sync_redis(), "bench", max_seconds=1.0, store=self._store)
            if flushed.entries == 0:
                self.stop.wait(0.02)
        connections.close_all()


class _Streams:
    """Stream tasks as a streams worker runs them: a thread each, all hosted by one runtime (one loop)."""

    def __init__(self) -> None:
        self.shutdown = ShutdownSignal()
        self.runtime = Runtime(self.shutdown)
        self._threads: list[threading.Thread] = []

    def start(self, symbols: list[str]) -> None:
        for symbol in symbols:
            sid = stream_id(symbol, TRADE)
            run = functools.partial(self.runtime.run_stream, sid, owner=f"bench:{sid}")
            thread = threading.Thread(target=run, daemon=True, name=f"bench-{symbol}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.shutdown.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.runtime.close()


@contextlib.contextmanager
def _streams_running(symbols: list[str]) -> Iterator[_Streams]:
    streams = _Streams()
    try:
        streams.start(symbols)
        yield streams
    finally:
        streams.stop()


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark condition not met in time")
        time.sleep(0.05)


def bench_throughput(streams: int, per_stream: int) -> Result:
    """Bursts of `per_stream` trades on `streams` streams at once, until all are committed."""
    symbols = [f"BENCH{i}USDT" for i in range(streams)]
    with exchange_process(dict.fromkeys(symbols, 0.0)) as (ws_url, rest_url, _, burst):
        elapsed = _pipeline(ws_url, rest_url, symbols, lambda: [burst(s, per_stream) for s in symbols],
                            streams * per_stream)
    return Result(f"pipeline, {streams} stream(s) -> PostgreSQL", streams * per_stream, elapsed)


def _pipeline(ws_url: str, rest_url: str, symbols: list[str], start: Callable[[], object], total: int) -> float:
    from django.conf import settings

    settings.BINANCE_WS_URL, settings.BINANCE_REST_URL = ws_url, rest_url
    flusher = _Flusher()
    try:
        with _streams_running(symbols):
            _wait(lambda: all(_connected(s) for s in symbols), 60)
            flusher.start()
            began = time.perf_counter()
            start()
            _wait(lambda: PriceUpdate.objects.count() >= total, 600)
            return time.perf_counter() - began
    finally:
        flusher.stop.set()
        if flusher.is_alive():
            flusher.join(timeout=30)


def bench_memory(extra: int = 50) -> Result:
    """Resident memory added by `extra` more idle, connected stream runners (one process, one loop)."""
    symbols = [f"MEM{i}USDT" for i in range(extra + 1)]
    with exchange_process(dict.fromkeys(symbols, 1.0)) as (ws_url, rest_url, _, __):
        from django.conf import settings

        settings.BINANCE_WS_URL, settings.BINANCE_REST_URL = ws_url, rest_url
        with _streams_running(symbols[:1]) as streams:
            _wait(lambda: _connected(symbols[0]), 60)
            before = _rss_kib()
            streams.start(symbols[1:])
            _wait(lambda: all(_connected(s) for s in symbols), 120)
            after = _rss_kib()
    return Result(f"memory per additional stream ({extra} added)", int((after - before) / extra), 1.0, "KiB")


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024


def bench_latency(rate: float = 1000.0, symbols: int = 5, seconds: float = 10.0) -> list[Result]:
    """Event time -> database commit at `rate` trades/s in all (markets trading in real time)."""
    names = [f"LAT{i}USDT" for i in range(symbols)]
    with exchange_process(dict.fromkeys(names, rate / symbols)) as (ws_url, rest_url, _, __):
        from django.conf import settings

        settings.BINANCE_WS_URL, settings.BINANCE_REST_URL = ws_url, rest_url
        flusher = _Flusher()
        flusher.start()
        with _streams_running(names):
            _wait(lambda: all(_connected(s) for s in names), 60)
            time.sleep(2.0)  # let the start-up backfill drain: the steady state is what is measured
            flusher.window_start_ms = time.time() * 1000
            time.sleep(seconds)  # the measurement window itself
        flusher.stop.set()
        flusher.join(timeout=30)
    live = sorted(flusher.window_latencies_ms)
    p50 = statistics.quantiles(live, n=100)[49]
    p99 = statistics.quantiles(live, n=100)[98]
    return [Result(f"event -> commit p50 at {rate:.0f} trades/s", int(p50), 1.0, "ms"),
            Result(f"event -> commit p99 at {rate:.0f} trades/s", int(p99), 1.0, "ms")]


def run_pipeline_benchmarks(count: int) -> list[Result]:
    results = []
    with scratch_default_database():
        for streams, per_stream in ((1, count), (50, max(count // 50, 100))):
            _clean_redis()
            PriceUpdate.objects.all().delete()
            results.append(bench_throughput(streams, per_stream))
        _clean_redis()
        results.append(bench_memory())
        _clean_redis()
        PriceUpdate.objects.all().delete()
        results.extend(bench_latency())
        _clean_redis()
        results.extend(bench_browser_latency())
        _clean_redis()
    return results


def bench_browser_latency(rate: float = 1000.0, symbols: int = 5, seconds: float = 10.0) -> list[Result]:
    """Exchange event time -> a WebSocket client of ws/trades/ (served by uvicorn) receiving the trade."""
    import os
    import subprocess
    import sys

    from django.conf import settings

    names = [f"WEB{i}USDT" for i in range(symbols)]
    db = connections["default"].settings_dict
    env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", "LOG_LEVEL": "WARNING",
           "REDIS_URL": settings.REDIS_URL,
           "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"}
    port = _free_port()
    web = subprocess.Popen([sys.executable, "-m", "uvicorn", "web.asgi:application", "--host", "127.0.0.1",  # noqa: S603
                            "--port", str(port), "--log-level", "warning"], env=env)
    latencies: list[float] = []
    try:
        with exchange_process(dict.fromkeys(names, rate / symbols)) as (ws_url, rest_url, _, __):
            settings.BINANCE_WS_URL, settings.BINANCE_REST_URL = ws_url, rest_url
            with _streams_running(names):
                _wait(lambda: all(_connected(s) for s in names), 60)
                latencies = asyncio.run(_browser(port, seconds))
    finally:
        web.terminate()
        web.wait(timeout=30)
    ordered = sorted(latencies)
    cuts = statistics.quantiles(ordered, n=100)
    return [Result(f"event -> browser p50 at {rate:.0f} trades/s", int(cuts[49]), 1.0, "ms"),
            Result(f"event -> browser p99 at {rate:.0f} trades/s", int(cuts[98]), 1.0, "ms")]


async def _browser(port: int, seconds: float) -> list[float]:
    import orjson
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    latencies: list[float] = []
    deadline = time.monotonic() + 30
    while True:  # the server may still be starting
        try:
            ws = await connect(f"ws://127.0.0.1:{port}/ws/trades/", origin=Origin(f"http://127.0.0.1:{port}"))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    async with ws:
        await asyncio.sleep(2.0)  # past the start-up backfill: the steady state is measured
        start_ms = time.time() * 1000
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                text = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            now_ms = time.time() * 1000
            frame = orjson.loads(text)
            if isinstance(frame, list):  # the trades (the hello and state frames are objects)
                latencies.extend(now_ms - t["event_ts"] for t in frame if t["event_ts"] >= start_ms)
    return latencies


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
