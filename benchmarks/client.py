"""Benchmarks of the exchange side: parsing alone, receive + parse from one connection, the standalone client.

They run against the fake exchange on loopback; the exchange runs in its own process so that the
client's core is the client's alone. `python manage.py benchmark` prints them with the machine's facts.
Each figure comes with a baseline measured in the same run (the machine is shared and noisy: the ratio
is what compares between runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from multiprocessing.connection import Connection as Pipe
from pathlib import Path

import httpx
import msgspec
import orjson
from websockets.asyncio.client import connect

from streams.binance import protocol
from streams.binance.client import ClientConfig, StreamClient
from streams.binance.protocol import TRADE, combined_stream_url, parse_frame, parse_frame_general

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
    versions = ", ".join(f"{name} {_version(name)}" for name in ("websockets", "orjson", "msgspec", "httpx",
                                                                 "Django", "celery"))
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


def bench_parse(count: int = 500_000) -> list[Result]:
    """Parsing alone, frames in memory: `parse_frame` against a bare `orjson.loads` and a bare msgspec decode of
    the same frames. Rounds interleave them; each figure is its best round in CPU time of this thread, so
    another process taking the core does not count (the machine is shared)."""
    frames = sample_frames(min(count, 50_000))
    struct_decode = protocol._decode_combined  # the fast path's decode alone: no checks, no Trade
    candidates: dict[str, Callable[[str], object]] = {
        "parse": parse_frame, "orjson": orjson.loads, "msgspec": msgspec.json.Decoder().decode,
        "struct": struct_decode, "general": parse_frame_general,
    }
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(max(5, count // len(frames))):
        for name, decode in candidates.items():
            start = time.thread_time()
            for frame in frames:
                decode(frame)
            best[name] = min(best[name], time.thread_time() - start)
    n = len(frames)
    versus = f"{best['orjson'] / best['parse']:.2f} x orjson.loads, {best['msgspec'] / best['parse']:.2f} x msgspec"
    return [
        Result(f"parse (combined frame -> Trade, CPU time): {versus}", n, best["parse"]),
        Result("  baseline: bare orjson.loads (to dicts)", n, best["orjson"]),
        Result("  baseline: bare msgspec.json.decode (to dicts)", n, best["msgspec"]),
        Result("  msgspec decode into the fast path's Structs alone", n, best["struct"]),
        Result("  the general path alone (orjson, then Python)", n, best["general"]),
    ]


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
    return [*bench_parse(), bench_receive(count)]


# --- The standalone client against a bare websockets reader ----------------------------------------------------

_BENCH_STREAM = f"{BENCH_SYMBOL.lower()}@trade"


@dataclass
class _Run:
    """One reader's run over a burst: trades after the first, wall seconds and CPU seconds over them."""

    trades: int
    seconds: float
    cpu: float


def bench_standalone(count: int = 200_000, repeat: int = 2) -> list[Result]:
    """`python -m streams.standalone` printing a burst into a pipe this process reads, against a bare websockets
    reader (receive and count, nothing else) and the StreamClient alone (batches, no output), each over its own
    burst of the same size from the same exchange; in turn, best of `repeat` each. Each clocks from its first
    trade to its last, in wall time (the rate) and in CPU time of the reading process (per trade)."""
    readers: dict[str, Callable[[str, str, int, Callable[[str, int], None]], _Run]] = {
        "bare": lambda *a: asyncio.run(_bare_reader(*a)),
        "client": lambda *a: asyncio.run(_client_alone(*a)),
        "standalone": _standalone,
    }
    best: dict[str, _Run] = {}
    with exchange_process() as (ws_url, rest_url, _, burst):
        for _ in range(repeat):
            for name, read in readers.items():
                run = read(ws_url, rest_url, count, burst)
                if name not in best or run.trades / run.seconds > best[name].trades / best[name].seconds:
                    best[name] = run
    bare, client, standalone = best["bare"], best["client"], best["standalone"]

    def cpu(run: _Run) -> str:
        return f"CPU {run.cpu / run.trades * 1e6:.1f} µs/trade"

    ratio = (standalone.trades / standalone.seconds) / (bare.trades / bare.seconds)
    return [
        Result(f"standalone, JSON lines into a pipe: {ratio:.2f} x bare ({cpu(standalone)})", standalone.trades,
               standalone.seconds),
        Result(f"  baseline: bare websockets reader ({cpu(bare)})", bare.trades, bare.seconds),
        Result(f"  StreamClient alone, batches, no output ({cpu(client)})", client.trades, client.seconds),
    ]


def _subscriptions(rest_url: str) -> int:
    """How many times the exchange has subscribed a connection to the benchmark's stream so far."""
    stats = httpx.get(f"{rest_url}/fake/stats", timeout=5.0).json()
    return int(stats["connections_opened"].get(_BENCH_STREAM, 0))


def _wait_for_subscription(rest_url: str, before: int, deadline: float = 60.0) -> None:
    """Until the exchange has subscribed one more connection than `before` (so that the burst reaches it)."""
    give_up = time.monotonic() + deadline
    while _subscriptions(rest_url) <= before:
        if time.monotonic() > give_up:
            raise RuntimeError(f"nothing subscribed to {_BENCH_STREAM} within {deadline:.0f} s")
        time.sleep(0.01)


async def _bare_reader(ws_url: str, rest_url: str, count: int, burst: Callable[[str, int], None]) -> _Run:
    before = await asyncio.to_thread(_subscriptions, rest_url)
    async with connect(combined_stream_url(ws_url, [_BENCH_STREAM]), compression=None, ping_interval=None,
                       max_size=protocol.MAX_FRAME_BYTES) as ws:
        await asyncio.to_thread(_wait_for_subscription, rest_url, before)
        await asyncio.to_thread(burst, BENCH_SYMBOL, count)
        await ws.recv()
        start, cpu = time.perf_counter(), time.thread_time()
        for _ in range(count - 1):
            await ws.recv()
        return _Run(count - 1, time.perf_counter() - start, time.thread_time() - cpu)


async def _client_alone(ws_url: str, rest_url: str, count: int, burst: Callable[[str, int], None]) -> _Run:
    config = ClientConfig.for_streams(ws_url, rest_url, [(BENCH_SYMBOL, TRADE)], silence_timeout=30.0)
    before = await asyncio.to_thread(_subscriptions, rest_url)
    async with StreamClient(config) as client:
        await asyncio.to_thread(_wait_for_subscription, rest_url, before)
        await asyncio.to_thread(burst, BENCH_SYMBOL, count)
        received = len(await client.next_batch(count))
        start, cpu = time.perf_counter(), time.thread_time()
        trades = count - received
        while received < count:
            received += len(await client.next_batch(count - received))
        return _Run(trades, time.perf_counter() - start, time.thread_time() - cpu)


def _standalone(ws_url: str, rest_url: str, count: int, burst: Callable[[str, int], None]) -> _Run:
    env = {**os.environ, "BINANCE_WS_URL": ws_url, "BINANCE_REST_URL": rest_url}
    env.pop("PYTHONUNBUFFERED", None)  # as users run it
    before = _subscriptions(rest_url)
    command = [sys.executable, "-m", "streams.standalone", BENCH_SYMBOL, TRADE, str(count)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, env=env) as child:  # noqa: S603 - our own module
        assert child.stdout is not None
        _wait_for_subscription(rest_url, before)
        burst(BENCH_SYMBOL, count)
        first = os.read(child.stdout.fileno(), 1 << 20)
        start, cpu = time.perf_counter(), _cpu_seconds(child.pid)
        lines, tail = first.count(b"\n"), first[-400:]
        trades = count - lines
        while lines < count and (chunk := os.read(child.stdout.fileno(), 1 << 20)):
            lines += chunk.count(b"\n")
            tail = (tail + chunk)[-400:]
        run = _Run(trades, time.perf_counter() - start, _cpu_seconds(child.pid) - cpu)
        if child.wait(timeout=30) != 0 or lines != count:
            raise RuntimeError(f"the standalone client exited {child.returncode} after {lines} lines")
    if orjson.loads(tail.splitlines()[-1])["ticker_symbol"] != BENCH_SYMBOL:
        raise RuntimeError(f"unexpected last line: {tail!r}")
    return run


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux's /proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
