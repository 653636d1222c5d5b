"""Benchmarks of the exchange side: parsing alone, and receive + parse from one connection.

Both run against the fake exchange on loopback; the exchange runs in its own process so that the
client's core is the client's alone. `python manage.py benchmark` prints them with the machine's facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from multiprocessing.connection import Connection as Pipe

import orjson

from streams.binance.client import ClientConfig, StreamClient
from streams.binance.protocol import TRADE, parse_frame

BENCH_SYMBOL = "BENCHUSDT"


@dataclass
class Result:
    name: str
    count: int
    seconds: float
    unit: str = "trades/s"

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        if self.unit in ("ms", "KiB"):  # a measured value, not a rate
            return f"{self.name:<46} {self.count:>12,} {self.unit}"
        return f"{self.name:<46} {self.rate:>12,.0f} {self.unit}  ({self.count:,} in {self.seconds:.2f} s)"


def machine_facts() -> list[str]:
    versions = ", ".join(f"{name} {_version(name)}" for name in ("websockets", "orjson", "httpx", "Django",
                                                                 "celery"))
    return [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"python: {platform.python_implementation()} {platform.python_version()} ({platform.python_build()[1]})",
        f"versions: {versions}",
    ]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def sample_frames(count: int) -> list[str]:
    """Realistic combined-stream trade frames with consecutive ids."""
    frames = []
    for i in range(count):
        data = {"e": "trade", "E": 1723161255343 + i, "s": BENCH_SYMBOL, "t": 3735683259 + i,
                "p": f"{61837.63 + (i % 100) / 100:.8f}", "q": "0.02000000", "T": 1723161255342 + i,
                "m": i % 2 == 0, "M": True}
        frames.append(orjson.dumps({"stream": "benchusdt@trade", "data": data}).decode())
    return frames


def bench_parse(count: int = 500_000, repeat: int = 3) -> Result:
    """Parsing alone: frames already in memory, best of `repeat` runs."""
    frames = sample_frames(min(count, 100_000))
    rounds = max(1, count // len(frames))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(rounds):
            for frame in frames:
                parse_frame(frame)
        best = min(best, time.perf_counter() - start)
    return Result("parse (combined frame -> Trade)", rounds * len(frames), best)


def _exchange_process(pipe: Pipe, symbols: dict[str, float]) -> None:
    """Child process: run a fake exchange and push bursts when told ((symbol, count), or None to stop)."""
    from streams.fake.exchange import FakeExchange

    async def serve() -> None:
        async with FakeExchange(symbols=symbols, seed=1, ping_interval=60.0, weight_limit=10**9,
                                connection_limit=10**6) as ex:
            pipe.send((ex.ws_url, ex.rest_url))
            loop = asyncio.get_running_loop()
            while True:
                command = await loop.run_in_executor(None, pipe.recv)
                if command is None:
                    return
                symbol, count = command
                ex.burst(symbol, count)
                pipe.send("started")

    asyncio.run(serve())


async def _receive(ws_url: str, rest_url: str, count: int, trigger: Callable[[], None]) -> Result:
    config = ClientConfig.for_streams(ws_url, rest_url, [(BENCH_SYMBOL, TRADE)], queue_size=50_000,
                                      silence_timeout=30.0)
    received = 0
    async with StreamClient(config) as client:
        while client.stats.state != "connected":
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # let the exchange register the subscription before the burst
        trigger()
        start = 0.0
        async for _ in client:
            if received == 0:
                start = time.perf_counter()
            received += 1
            if received == count:
                break
        elapsed = time.perf_counter() - start
    return Result("receive + parse, one connection (StreamClient)", received - 1, elapsed)


@contextlib.contextmanager
def exchange_process(symbols: dict[str, float] | None = None
                     ) -> Iterator[tuple[str, str, Callable[[int], None], Callable[[str, int], None]]]:
    """A fake exchange in a child process: (ws_url, rest_url, burst(n) of BENCHUSDT, burst_symbol(symbol, n))."""
    context = mp.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_exchange_process, args=(child, symbols or {BENCH_SYMBOL: 0.0}), daemon=True)
    process.start()

    def burst_symbol(symbol: str, count: int) -> None:
        parent.send((symbol, count))
        parent.recv()

    try:
        ws_url, rest_url = parent.recv()
        yield ws_url, rest_url, lambda count: parent.send((BENCH_SYMBOL, count)), burst_symbol
    finally:
        parent.send(None)
        process.join(timeout=5)
        if process.is_alive():
            process.kill()


def bench_receive(count: int = 200_000) -> Result:
    """Client receive + parse + sequencing from one connection, the exchange pushing a burst."""
    with exchange_process() as (ws_url, rest_url, burst, _):
        return asyncio.run(_receive(ws_url, rest_url, count, lambda: burst(count)))


def run_client_benchmarks(count: int) -> list[Result]:
    return [bench_parse(), bench_receive(count)]
