"""`manage.py benchmark --only browser`: live pages on one web process at a steady trade rate.

Four processes on this machine: the web process as the Procfile runs it (uvicorn), the pages (one process
of raw WebSocket clients on uvloop, each counting every trade it gets), the publisher (what a streams
worker's runtime does with the trades it handed on: `streams.broadcast.Broadcaster.offer`, one batch per
hand-off) and this one, which also times GET /healthz on the web process during the load. The same load
then runs against the browser side as it was (`benchmarks.browser_baseline`: a layer group member per page).

Every page subscribes to every symbol (`ws/trades/`): each gets all the trades. Delivered is the share of
(page, trade) pairs that arrived; event-to-page is the page's receive time minus the trade's event time
(stamped by the publisher when it makes the batch; "event -> sent by the publisher" is the stream side's
own share), over every trade of every 100th page, and as an upper
bound over every frame of every page (the frame's oldest trade). Tunable through the environment:
LIVE_BENCH_PAGES (2000), LIVE_BENCH_RATE (1000 trades/s), LIVE_BENCH_SECONDS (20), LIVE_BENCH_BATCH_MS (10:
a batch every 10 ms), LIVE_BENCH_BASELINE (1: also measure the baseline). Uses REDIS_URL: run it against a
Redis of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import IO, Any, cast

import orjson

from benchmarks.client import Result
from benchmarks.webprocess import ROOT, free_port, start_web, wait_listening
from web.live.wire import expand_compact

SYMBOLS = [f"LIVE{i}USDT" for i in range(5)]
SAMPLE_EVERY = 100         # every 100th page parses every trade for the exact event-to-page figures
LATENCY_CAP_MS = 60_000
CONNECT_TIMEOUT = 120.0    # s for all pages to connect
DRAIN_TIMEOUT = 15.0       # s after the last trade for the pages to get it


@dataclass
class Measured(Result):
    """A figure with its own unit (%, ms, pages, MB), printed as it is."""

    text: str = ""

    def line(self) -> str:
        return f"{self.name:<46} {self.text}"


def run_browser_benchmarks(_count: int) -> list[Result]:
    pages = int(os.environ.get("LIVE_BENCH_PAGES", "2000"))
    rate = float(os.environ.get("LIVE_BENCH_RATE", "1000"))
    seconds = float(os.environ.get("LIVE_BENCH_SECONDS", "20"))
    batch_ms = float(os.environ.get("LIVE_BENCH_BATCH_MS", "10"))
    results = _figures("hub", measure(pages, rate, seconds, batch_ms, baseline=False))
    if os.environ.get("LIVE_BENCH_BASELINE", "1") == "1":
        results += _figures("baseline", measure(pages, rate, seconds, batch_ms, baseline=True))
    return results


def _figures(label: str, r: dict[str, Any]) -> list[Result]:
    def line(name: str, text: str) -> Measured:
        return Measured(f"browser ({label}): {name}", 0, 1.0, text=text)

    out: list[Result] = [line(f"{r['pages']} pages at {r['rate']:.0f} trades/s",
                              f"{r['connected']} connected, {r['open_at_end']} open at the end, "
                              f"{r['refused']} refused")]
    out.append(line("delivered to every page",
                    f"{r['delivered_pct']:.2f} % ({r['complete_pages']} pages got every trade of "
                    f"{r['expected']:,}; the publisher dropped {r['publisher_dropped']:,})"))
    if r["sample_p50"] is not None:
        out.append(line("event -> page p50 / p99 (every trade, 1 page in 100)",
                        f"{r['sample_p50']:.0f} / {r['sample_p99']:.0f} ms"))
    if r["frame_p99"] is not None:
        out.append(line("event -> page p99 (every page, oldest of frame)", f"{r['frame_p99']:.0f} ms"))
    out.append(line("event -> sent by the publisher p50 / p99", f"{r['send_p50']:.0f} / {r['send_p99']:.0f} ms"))
    out.append(line("GET /healthz during the load p50 / p99", f"{r['http_p50']:.0f} / {r['http_p99']:.0f} ms"))
    out.append(line("CPU per second of trades: web process / pages",
                    f"{r['cpu']['web']:.2f} (kernel {r['cpu']['web_system']:.2f}) / {r['cpu']['pages']:.2f} cores"))
    out.append(line("machine load at the end (1-minute average)", f"{r['load']:.1f} on {os.cpu_count()} cores"))
    out.append(line("web process: waited for a CPU per second of trades", f"{r['cpu']['web_waited']:.2f} s"))
    out.append(line("web process memory (RSS) idle -> loaded",
                    f"{r['rss_idle_mb']:.0f} -> {r['rss_loaded_mb']:.0f} MB"))
    out.append(line("channel-layer group members during the load", str(r["members"])))
    if r.get("hub"):
        hub = r["hub"]
        out.append(line("hub: dropped as too slow / refused / feed errors",
                        f"{hub.get('dropped_slow', 0)} / {hub.get('refused', 0)} / {hub.get('feed_errors', 0)}"))
        out.append(line("hub: frames made / time waiting for writers / loop lag",
                        f"{hub.get('flushes', 0)} / {hub.get('paced_ms', 0)} ms / {hub.get('loop_lag_ms', 0)} ms"))
    return out


# --- the orchestration ---------------------------------------------------------------------------------

def measure(pages: int, rate: float, seconds: float, batch_ms: float, *, baseline: bool,
            spread: bool = False) -> dict[str, Any]:
    from django.conf import settings

    from workers.redis import sync_redis

    redis = sync_redis()
    _forget_groups(redis)
    env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", "LOG_LEVEL": "WARNING",
           "REDIS_URL": settings.REDIS_URL, "LIVE_MAX_CONNECTIONS": str(pages + 100)}
    if baseline:  # the layer's settings as they were: channels-redis's defaults
        env.update(LIVE_GROUP_EXPIRY="86400", LIVE_LAYER_CAPACITY="100")
    port = free_port()
    web = _start_baseline(port, env) if baseline else start_web(port, env)
    try:
        wait_listening(port, web)
        rss_idle = _rss_mb(web.pid)
        clients = _child(["pages", str(port), str(pages), "spread" if spread else "all"], env)
        ready = _read_json(clients.stdout, "READY", CONNECT_TIMEOUT + 30)
        members = redis.zcard("asgi:group:binance_data")
        timer = _HttpTimer(port)
        timer.start()
        web_cpu, web_sys, web_waited = (_cpu_seconds(web.pid), _cpu_seconds(web.pid, "system"),
                                        _runqueue_seconds(web.pid))
        publisher = _child(["publish", str(rate), str(seconds), str(batch_ms)], env)
        published = _read_json(publisher.stdout, "RESULT", seconds + 120)
        publisher.wait(timeout=30)
        members = max(members, redis.zcard("asgi:group:binance_data"))
        assert clients.stdin is not None
        wanted = {"/ws/trades/": published["sent"]} | {f"/ws/trades/{symbol.lower()}/": count
                                                       for symbol, count in published["by_symbol"].items()}
        clients.stdin.write((json.dumps(wanted) + "\n").encode())
        clients.stdin.flush()
        received = _read_json(clients.stdout, "RESULT", DRAIN_TIMEOUT + 60)
        # CPU time for the whole work (the trades, until the pages had them) over the seconds of trading:
        # the cores each process needs to keep up, whatever else the machine runs meanwhile.
        cpu = {"web": (_cpu_seconds(web.pid) - web_cpu) / published["seconds"],
               "pages": (received["cpu"] - ready["cpu"]) / published["seconds"],
               "web_system": (_cpu_seconds(web.pid, "system") - web_sys) / published["seconds"],
               "web_waited": (_runqueue_seconds(web.pid) - web_waited) / published["seconds"]}
        clients.wait(timeout=30)
        timer.stop.set()
        timer.join(timeout=10)
        rss_loaded = _rss_mb(web.pid)
        hub = _hub_stats()
        load = os.getloadavg()[0]
    finally:
        web.terminate()
        web.wait(timeout=30)
        _forget_groups(redis)
    expected = published["sent"]
    counts, wanted = received["counts"], received["expected"]
    delivered = sum(min(c, e) for c, e in zip(counts, wanted, strict=True))
    http = sorted(timer.times_ms) or [0.0]
    return {
        "pages": pages, "rate": rate, "connected": ready["connected"], "refused": ready["failed"],
        "open_at_end": received["open"], "expected": expected, "publisher_dropped": published["dropped"],
        "delivered_pct": 100.0 * delivered / sum(wanted) if expected else 0.0,
        "complete_pages": sum(1 for c, e in zip(counts, wanted, strict=True) if c == e), "spread": spread,
        "sample_p50": received["sample_p50"], "sample_p99": received["sample_p99"], "frame_p99": received["frame_p99"],
        "http_p50": statistics.median(http), "http_p99": _quantile(http, 0.99),
        "rss_idle_mb": rss_idle, "rss_loaded_mb": rss_loaded, "members": members, "hub": hub,
        "send_p50": published["send_p50"], "send_p99": published["send_p99"], "cpu": cpu, "load": load,
    }


def _start_baseline(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The web process as the Procfile ran it before the live hub, serving the group-per-page consumer."""
    return subprocess.Popen([sys.executable, "-m", "uvicorn", "benchmarks.browser_baseline:application",  # noqa: S603
                             "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _child(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.browser", *args], cwd=ROOT, env=env,  # noqa: S603
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _read_json(stream: IO[bytes] | None, tag: str, timeout: float) -> dict[str, Any]:
    """The JSON of the child's next `<tag> {...}` line (its other lines are passed on)."""
    assert stream is not None
    found: dict[str, Any] = {}

    def read() -> None:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith(tag + " "):
                found.update(json.loads(line[len(tag) + 1:]))
                return
            print(line, file=sys.stderr)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        raise RuntimeError(f"no {tag} from the benchmark child within {timeout:.0f} s")
    return found


def _forget_groups(redis: Any) -> None:
    for key in redis.scan_iter(match="asgi:group:*", count=1000):
        redis.delete(key)
    for key in redis.scan_iter(match="collector:live:*", count=1000):
        redis.delete(key)


def _hub_stats() -> dict[str, int]:
    from web.live.state import read_live_stats

    everything = read_live_stats()
    return next(iter(everything.values())) if everything else {}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def _cpu_seconds(pid: int, field: str = "both") -> float:
    """CPU time of the process: user, system (the kernel's share: sockets), or both."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])
    ticks = {"user": user, "system": system, "both": user + system}[field]
    return ticks / os.sysconf("SC_CLK_TCK")


def _runqueue_seconds(pid: int) -> float:
    """Time the process's threads were runnable but waited for a CPU (the machine's other work)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
            total += int(stat.read().split()[1])
    return total / 1e9


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _HttpTimer(threading.Thread):
    """GET /healthz twice a second while the load runs: how the web process answers everything else."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True, name="bench-http")
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.stop = threading.Event()
        self.times_ms: list[float] = []

    def run(self) -> None:
        while not self.stop.wait(0.5):
            began = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as response:  # noqa: S310 - loopback
                    response.read()
            except OSError as exc:  # 503 (no beat here) is an answer too
                if not hasattr(exc, "code"):
                    continue
            self.times_ms.append((time.perf_counter() - began) * 1000)


# --- the children --------------------------------------------------------------------------------------

def main(argv: list[str]) -> None:
    if argv[0] == "pages":
        import uvloop

        uvloop.run(_pages(int(argv[1]), int(argv[2]), argv[3] == "spread"))
    elif argv[0] == "publish":
        import django

        django.setup()
        result = asyncio.run(_publish(float(argv[1]), float(argv[2]), float(argv[3])))
        print("RESULT " + json.dumps(result), flush=True)


async def _publish(rate: float, seconds: float, batch_ms: float) -> dict[str, Any]:
    """Offer `rate` trades/s for `seconds` as one streams worker's runtime would: a batch every `batch_ms`,
    its symbols taking turns, through the stream side's own Broadcaster (format and groups unchanged)."""
    from channels.layers import get_channel_layer

    from streams.binance.protocol import TRADE, Trade
    from streams.broadcast import ALL_TRADES_GROUP, Broadcaster

    layer = get_channel_layer()
    assert layer is not None  # the settings configure the Redis layer
    sent_after: list[float] = []  # ms from a batch's event time until its send to `binance_data` returned
    group_send = layer.group_send

    async def timed_group_send(group: str, message: dict[str, Any]) -> None:
        await group_send(group, message)
        if group == ALL_TRADES_GROUP:
            text = message["trades"]
            at = text.find('"event_ts":') + 11
            sent_after.append(time.time() * 1000 - int(text[at:text.find(",", at)]))

    layer.group_send = timed_group_send  # type: ignore[method-assign]  # the Broadcaster, timed from outside
    # Only `binance_data`: since the live hub nobody joins `trades.<symbol>` (the stream side still sends
    # there, 0.6 ms a group).
    broadcaster = Broadcaster([ALL_TRADES_GROUP], per_symbol=False, layer=layer, queue_size=1000)
    broadcaster.start()
    total = int(rate * seconds)
    per_batch_s = batch_ms / 1000
    loop = asyncio.get_running_loop()
    began = loop.time()
    made = 0
    ids = dict.fromkeys(SYMBOLS, 0)
    while made < total:
        due = int(min(total, (loop.time() - began) * rate + 1))  # trades that should have been offered by now
        batch = []
        now_ms = int(time.time() * 1000)
        while made < due:
            symbol = SYMBOLS[made % len(SYMBOLS)]
            ids[symbol] += 1
            batch.append(Trade(symbol, TRADE, ids[symbol], f"{61000 + made % 100}.12000000", "0.00100000",
                               now_ms, now_ms, made % 2 == 0))
            made += 1
        if batch:
            broadcaster.offer(batch)
        await asyncio.sleep(per_batch_s)
    await broadcaster.close()
    stats = broadcaster.stats
    ordered = sorted(sent_after) or [0.0]
    return {"offered": made, "sent": stats.trades_sent, "dropped": stats.trades_dropped, "by_symbol": ids,
            "seconds": loop.time() - began, "send_p50": statistics.median(ordered),
            "send_p99": _quantile(ordered, 0.99)}


class _Page(asyncio.Protocol):
    """A WebSocket client of the live page's kind (`?format=compact`) that parses frames and counts trades
    without decoding them (but 1 page in 100)."""

    HANDSHAKE = (b"GET %s?format=compact HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 b"Origin: http://127.0.0.1\r\n\r\n")

    def __init__(self, path: str, sample: bool, frame_hist: list[int], sample_hist: list[int]) -> None:
        self.path = path
        self.sample = sample
        self.frame_hist, self.sample_hist = frame_hist, sample_hist
        self.buffer = bytearray()
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.trades = 0
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # create_connection's: a TCP transport
        self.transport.write(self.HANDSHAKE % self.path.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.opened.done():
            self.opened.set_result(False)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.opened.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            accepted = buffer.startswith(b"HTTP/1.1 101")
            del buffer[:end + 4]
            self.open = accepted
            self.opened.set_result(accepted)
            if not accepted:
                assert self.transport is not None
                self.transport.close()
                return
        while len(buffer) >= 2:
            length, start = buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + length:
                return
            opcode = buffer[0] & 0x0F
            payload = bytes(buffer[start:start + length])
            del buffer[:start + length]
            self._frame(opcode, payload)

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x1 and payload.startswith(COMPACT):  # the live page's frames (web.live.wire)
            now_ms = int(time.time() * 1000)
            count = int(payload[len(COMPACT):payload.index(b",", len(COMPACT))])
            oldest = min(_first_row_event(payload, at) for at in _find_all(payload, b":[["))
            self._count(now_ms, count, oldest)
            if self.sample:
                for trade in expand_compact(orjson.loads(payload)):
                    self.sample_hist[min(LATENCY_CAP_MS, max(0, now_ms - trade["event_ts"]))] += 1
        elif opcode == 0x1 and payload[:1] == b"[":  # the baseline's: an array of trade objects
            now_ms = int(time.time() * 1000)
            at = payload.find(b'"event_ts":') + 11
            self._count(now_ms, payload.count(b"}"), int(payload[at:payload.find(b",", at)]))
            if self.sample:
                for trade in orjson.loads(payload):
                    self.sample_hist[min(LATENCY_CAP_MS, max(0, now_ms - trade["event_ts"]))] += 1
        elif opcode == 0x9 and self.transport is not None:  # ping: a masked pong (zero mask) with its payload
            self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
        elif opcode == 0x8:
            self.open = False


    def _count(self, now_ms: int, count: int, oldest_event_ms: int) -> None:
        self.trades += count
        self.frame_hist[min(LATENCY_CAP_MS, max(0, now_ms - oldest_event_ms))] += count


COMPACT = b'{"type":"trades","n":'


def _find_all(payload: bytes, needle: bytes) -> list[int]:
    found, at = [], payload.find(needle)
    while at >= 0:
        found.append(at)
        at = payload.find(needle, at + 1)
    return found


def _first_row_event(payload: bytes, at: int) -> int:
    """The event time of a stream's first row in a compact frame (its trade time there is absolute)."""
    row = payload[at + 3:payload.index(b"]", at + 3)].split(b",")
    return int(row[-3]) + int(row[-2])


async def _pages(port: int, count: int, spread: bool) -> None:
    loop = asyncio.get_running_loop()
    frame_hist = [0] * (LATENCY_CAP_MS + 1)
    sample_hist = [0] * (LATENCY_CAP_MS + 1)
    paths = [f"/ws/trades/{SYMBOLS[i % len(SYMBOLS)].lower()}/" if spread else "/ws/trades/" for i in range(count)]
    pages = [_Page(paths[i], i % SAMPLE_EVERY == 0, frame_hist, sample_hist) for i in range(count)]
    gate = asyncio.Semaphore(100)

    async def open_page(page: _Page) -> None:
        async with gate:
            try:
                await loop.create_connection(lambda: page, "127.0.0.1", port)
                await asyncio.wait_for(page.opened, 30)
            except (OSError, TimeoutError):
                if not page.opened.done():
                    page.opened.set_result(False)

    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await asyncio.gather(*(open_page(p) for p in pages))
    except TimeoutError:
        pass
    connected = sum(1 for p in pages if p.opened.done() and p.opened.result())
    print("READY " + json.dumps({"connected": connected, "failed": count - connected, "cpu": time.process_time()}),
          flush=True)
    for p in pages:  # what arrived before the load (nothing is published yet) is not counted
        p.trades = 0
    wanted = json.loads(await loop.run_in_executor(None, sys.stdin.readline))  # {path: trades it should get}
    expected = [wanted[p.path] for p in pages]
    deadline = loop.time() + DRAIN_TIMEOUT
    while loop.time() < deadline and any(p.open and p.trades < e for p, e in zip(pages, expected, strict=True)):
        await asyncio.sleep(0.1)
    result = {"counts": [p.trades for p in pages], "expected": expected, "open": sum(1 for p in pages if p.open),
              "sample_p50": _hist_quantile(sample_hist, 0.5), "sample_p99": _hist_quantile(sample_hist, 0.99),
              "frame_p99": _hist_quantile(frame_hist, 0.99), "cpu": time.process_time()}
    print("RESULT " + json.dumps(result), flush=True)
    for p in pages:
        if p.transport is not None:
            p.transport.abort()


def _hist_quantile(hist: list[int], q: float) -> float | None:
    total = sum(hist)
    if not total:
        return None
    seen = 0
    for value, n in enumerate(hist):
        seen += n
        if seen >= q * total:
            return float(value)
    return float(len(hist) - 1)


if __name__ == "__main__":
    main(sys.argv[1:])
