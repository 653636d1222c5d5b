"""The chaos soak (`manage.py benchmark --only soak --minutes N`): the whole stack for N minutes under faults.

The Procfile's `streams`, `worker` and `beat` processes, as production runs them, against the fake exchange
with random faults (drops, stalls, garbage and poison frames, shutdown notices, replays, REST pages that
are not JSON, 24 h cut-offs made short), and on top of those: SIGKILLs of both workers (each restarted at
once, as `make run` does), PostgreSQL cut away behind a TCP proxy, and a private Redis restarted empty (no
persistence: the buffer, the leases and the status are lost). Then the faults stop, the streams catch up,
the audit fills what Redis lost, and the database is compared with the exchange's record: every trade of
every symbol from its first stored id to the last one made before the end, once, value for value.

Everything is the soak's own: a scratch PostgreSQL database (dropped afterwards), a redis-server on a free
port, the exchange on free ports. The machine's Redis and PostgreSQL server are never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import dj_database_url
import redis

from benchmarks.harness import (
    ROOT,
    PrivateRedis,
    environment,
    manage,
    query,
    rss_kib,
    scratch_database,
    wait_until,
)
from streams.binance.protocol import TRADE, Trade, datetime_from_exchange
from streams.fake.exchange import FakeExchange, running_exchange
from streams.fake.faults import FaultRates
from streams.fake.market import micros
from streams.fake.proxy import TcpProxy

SYMBOLS = {"BTCUSDT": 60.0, "ETHUSDT": 50.0, "BNBUSDT": 40.0, "SOLUSDT": 30.0, "XRPUSDT": 15.0, "DOGEUSDT": 4.0,
           "QUIETUSDT": 0.2}  # ~200 trades/s, one symbol with a trade every 5 s
FAULTS = FaultRates(drop=0.004, stall=0.002, garbage=0.03, shutdown=0.002, replay=0.002, rest_garbage=0.01)
LIFETIME = 180.0   # the exchange's connection lifetime, made short so that rotations happen
TUNING = {         # the processes' settings: production's, tightened so that a soak of minutes sees recoveries
    "COLLECTOR_HEARTBEAT_INTERVAL": "1", "COLLECTOR_LEASE_TTL": "8", "COLLECTOR_STALE_AFTER": "20",
    "COLLECTOR_START_TIMEOUT": "15", "COLLECTOR_SUPERVISE_INTERVAL": "2", "COLLECTOR_AUDIT_INTERVAL": "20",
    "COLLECTOR_FLUSH_INTERVAL": "1", "COLLECTOR_RECLAIM_IDLE": "20", "BINANCE_BACKOFF_CAP": "5",
    "BINANCE_SILENCE_TIMEOUT": "5", "BINANCE_PROBE_TIMEOUT": "3", "BINANCE_ROTATE_AFTER": "150",
}
PROCESSES = {
    "streams": ["-m", "celery", "-A", "project", "worker", "-Q", "streams", "-P", "threads", "-c", "20",
                "-n", "streams@%h", "-E", "--without-gossip", "--without-mingle"],
    "worker": ["-m", "celery", "-A", "project", "worker", "-Q", "celery", "-P", "threads", "-c", "4",
               "-n", "worker@%h", "-E", "--without-gossip", "--without-mingle"],
    "beat": ["-m", "celery", "-A", "project", "beat", "-S", "django", "--pidfile="],
}
CHAOS = ("kill streams", "kill worker", "cut postgresql", "restart redis empty")
DATABASE_CUT = 30.0   # seconds PostgreSQL stays away
SETTLE = 300.0        # seconds allowed for catching up and healing at the end


@dataclass
class Incarnation:
    started: float
    pid: int
    rss_kib: list[tuple[float, int]] = field(default_factory=list)  # (minutes into the soak, RSS)


@dataclass
class SoakReport:
    minutes: float
    trades: int = 0
    missing: int = 0
    duplicated: int = 0
    different: int = 0
    per_symbol: dict[str, tuple[int, int]] = field(default_factory=dict)   # symbol: (stored, missing)
    faults: Counter[str] = field(default_factory=Counter)
    processes: dict[str, list[Incarnation]] = field(default_factory=dict)
    dead_letters: int = 0
    settled_in: float = 0.0

    def lines(self) -> list[str]:
        out = [f"soak: {self.minutes:g} minutes, {self.trades:,} trades stored and compared with the record; "
               f"missing {self.missing}, duplicated {self.duplicated}, different {self.different}; "
               f"caught up and healed {self.settled_in:.0f} s after the faults stopped"]
        out += [f"  {symbol}: {stored:,} trades, {missing} missing" for symbol, (stored, missing)
                in sorted(self.per_symbol.items())]
        out.append("  faults survived: " + ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items())))
        out.append(f"  dead letters (bad frames refused): {self.dead_letters}")
        for name, incarnations in self.processes.items():
            for i, life in enumerate(incarnations):
                samples = [(m, kib) for m, kib in life.rss_kib if kib > 0 and m >= life.started + 0.25]
                if not samples:
                    continue
                warm = next(((m, kib) for m, kib in samples if m >= life.started + 1), samples[-1])
                end = samples[-1]
                line = (f"  RSS {name} #{i + 1} (from minute {life.started:.1f}): {warm[1] / 1024:.1f} MiB at "
                        f"minute {warm[0]:.1f}, {end[1] / 1024:.1f} MiB at minute {end[0]:.1f}")
                if end[0] - warm[0] >= 10:  # a long life: its course, every 5 minutes, to tell growth from warm-up
                    course, mark = [], warm[0]
                    for minute, kib in samples:
                        if minute >= mark:
                            course.append(f"{kib / 1024:.0f}")
                            mark = minute + 5
                    line += f" (every 5 min: {', '.join(course)} MiB)"
                out.append(line)
        return out


def run_soak(minutes: float, say: Callable[[str], None] = print, seed: int = 1) -> SoakReport:
    for noisy in ("streams.fake", "websockets"):  # the exchange runs in this process: its lines are not the soak's
        logging.getLogger(noisy).setLevel(logging.WARNING)
    rng = random.Random(seed)
    report = SoakReport(minutes)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        database = stack.enter_context(scratch_database())
        redis_server = stack.enter_context(PrivateRedis(workdir))
        ex = stack.enter_context(running_exchange(symbols=SYMBOLS, seed=seed, faults=FAULTS, max_lifetime=LIFETIME))
        target = dj_database_url.parse(database)
        proxy = TcpProxy(target["HOST"], int(target["PORT"]))
        stack.callback(proxy.close)
        env = environment(database, redis_server.url, ex, TUNING, proxy_port=proxy.port)
        manage(env, "migrate", "--noinput", direct=database)  # the periodic tasks get TUNING's intervals
        for symbol in SYMBOLS:
            manage(env, "streams", "enable", symbol)
        fleet = stack.enter_context(_Fleet(env, workdir, report))
        say(f"soak: {len(SYMBOLS)} symbols, ~{sum(SYMBOLS.values()):.0f} trades/s, logs in {workdir}")
        start = time.monotonic()

        def elapsed() -> float:
            return (time.monotonic() - start) / 60

        wait_until(lambda: _stored_everywhere(database), 120, "every symbol stored a trade")
        events = [*CHAOS] * max(1, int(minutes // 6))
        rng.shuffle(events)
        chaos_until = minutes * 0.75
        times = sorted(rng.uniform(1.0, chaos_until) for _ in events)
        for at, event in zip(times, events, strict=True):
            while elapsed() < at:
                fleet.sample(elapsed())
                time.sleep(min(5.0, max(0.1, (at - elapsed()) * 60)))
            say(f"minute {elapsed():.1f}: {event}")
            _chaos(event, fleet, proxy, redis_server, report)
        while elapsed() < minutes:
            fleet.sample(elapsed())
            time.sleep(5.0)
        ex.calm()
        settle_start = time.monotonic()
        last_made = {symbol: ex.record(symbol)[-1].trade_id for symbol in SYMBOLS}
        say(f"minute {elapsed():.1f}: faults stopped; waiting for every stream to catch up and every hole to heal")
        wait_until(lambda: _complete(database, last_made), SETTLE, "the database caught up with the record")
        report.settled_in = time.monotonic() - settle_start
        fleet.sample(elapsed())
        _compare(database, ex, last_made, report)
        report.faults.update({f"exchange {k}": v for k, v in ex.stats.faults.items()})
        report.dead_letters = int(redis.Redis.from_url(redis_server.url).get("collector:dead-letters:total") or 0)
    return report


class _Fleet:
    """The three processes; `restart(name)` after a SIGKILL, as `make run`'s runner does."""

    def __init__(self, env: dict[str, str], workdir: Path, report: SoakReport) -> None:
        self.env, self.workdir, self.report = env, workdir, report
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started = time.monotonic()

    def __enter__(self) -> _Fleet:
        for name in PROCESSES:
            self.start(name)
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def start(self, name: str) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        process = subprocess.Popen([sys.executable, *PROCESSES[name]], cwd=ROOT, env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT)
        log.close()
        self.processes[name] = process
        minute = (time.monotonic() - self.started) / 60
        self.report.processes.setdefault(name, []).append(Incarnation(minute, process.pid))

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.kill()
        process.wait(timeout=10)
        self.start(name)

    def sample(self, minute: float) -> None:
        """RSS of each process; one that died by itself is restarted (as `make run` does) and counted."""
        for name, process in list(self.processes.items()):
            if process.poll() is not None:
                self.report.faults[f"{name} died by itself (restarted)"] += 1
                self.start(name)
        for name, process in self.processes.items():
            rss = rss_kib(process.pid)
            if rss is not None:
                self.report.processes[name][-1].rss_kib.append((minute, rss))


def _chaos(event: str, fleet: _Fleet, proxy: TcpProxy, redis_server: PrivateRedis, report: SoakReport) -> None:
    if event.startswith("kill "):
        fleet.kill(event.removeprefix("kill "))
    elif event == "cut postgresql":
        proxy.cut()
        time.sleep(DATABASE_CUT)  # the outage itself: the soak's clock, not a synchronisation
        proxy.restore()
    elif event == "restart redis empty":
        redis_server.restart_empty()
    report.faults[event] += 1


def _stored_everywhere(database: str) -> bool:
    rows = query(database, "SELECT count(DISTINCT ticker_symbol) FROM streams_priceupdate")
    return int(rows[0][0]) == len(SYMBOLS)


def _complete(database: str, last_made: dict[str, int]) -> bool:
    """Every symbol stored up to its last trade made, with no hole from its first stored id."""
    rows = query(database, "SELECT ticker_symbol, min(trade_id), max(trade_id), count(*) FROM streams_priceupdate "
                            "WHERE channel = %s GROUP BY ticker_symbol", TRADE)
    found = {symbol: (low, high) for symbol, low, high, _ in rows}
    for symbol, last in last_made.items():
        low, high = found.get(symbol, (0, -1))
        if high < last:
            return False
        below = query(database, "SELECT count(*) FROM streams_priceupdate WHERE ticker_symbol = %s AND "
                                 "channel = %s AND trade_id <= %s", symbol, TRADE, last)[0][0]
        if below != last - low + 1:
            return False
    return True


def _compare(database: str, ex: FakeExchange, last_made: dict[str, int], report: SoakReport) -> None:
    for symbol, last in last_made.items():
        record = {t.trade_id: t for t in ex.record(symbol) if t.trade_id <= last}
        rows = query(database, "SELECT trade_id, price, volume, trade_time, is_market_maker FROM "
                                "streams_priceupdate WHERE ticker_symbol = %s AND channel = %s AND trade_id <= %s "
                                "ORDER BY trade_id", symbol, TRADE, last)
        ids = [row[0] for row in rows]
        present = set(ids)
        missing = sum(1 for trade_id in range(ids[0], last + 1) if trade_id not in present)
        report.missing += missing
        report.duplicated += len(ids) - len(set(ids))
        report.different += sum(1 for row in rows if not _same(row, record.get(row[0])))
        report.trades += len(ids)
        report.per_symbol[symbol] = (len(ids), missing)


def _same(row: tuple[Any, ...], trade: Trade | None) -> bool:
    if trade is None:
        return False
    _, price, volume, trade_time, maker = row
    return (Decimal(price), Decimal(volume), trade_time, maker) == (
        trade.price, trade.quantity, datetime_from_exchange(micros(trade.trade_ts)), trade.is_buyer_maker)


