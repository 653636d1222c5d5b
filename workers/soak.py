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
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import dj_database_url
import psycopg
import redis

from streams.binance.protocol import TRADE, Trade, datetime_from_exchange
from streams.fake.exchange import FakeExchange, running_exchange
from streams.fake.faults import FaultRates
from streams.fake.market import micros
from streams.fake.proxy import TcpProxy
from streams.storage_benchmarks import postgres_url

ROOT = Path(__file__).resolve().parent.parent
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
                out.append(f"  RSS {name} #{i + 1} (from minute {life.started:.1f}): {warm[1] / 1024:.1f} MiB at "
                           f"minute {warm[0]:.1f}, {end[1] / 1024:.1f} MiB at minute {end[0]:.1f}")
        return out


def run_soak(minutes: float, say: Callable[[str], None] = print, seed: int = 1) -> SoakReport:
    for noisy in ("streams.fake", "websockets"):  # the exchange runs in this process: its lines are not the soak's
        logging.getLogger(noisy).setLevel(logging.WARNING)
    rng = random.Random(seed)
    report = SoakReport(minutes)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        database = stack.enter_context(_scratch_database())
        redis_server = stack.enter_context(_PrivateRedis(workdir))
        ex = stack.enter_context(running_exchange(symbols=SYMBOLS, seed=seed, faults=FAULTS, max_lifetime=LIFETIME))
        target = dj_database_url.parse(database)
        proxy = TcpProxy(target["HOST"], int(target["PORT"]))
        stack.callback(proxy.close)
        env = _environment(database, proxy.port, redis_server.url, ex)
        _manage(env, "migrate", "--noinput", direct=database)  # the periodic tasks get TUNING's intervals
        for symbol in SYMBOLS:
            _manage(env, "streams", "enable", symbol)
        fleet = stack.enter_context(_Fleet(env, workdir, report))
        say(f"soak: {len(SYMBOLS)} symbols, ~{sum(SYMBOLS.values()):.0f} trades/s, logs in {workdir}")
        start = time.monotonic()

        def elapsed() -> float:
            return (time.monotonic() - start) / 60

        _wait(lambda: _stored_everywhere(database), 120, "every symbol stored a trade")
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
        _wait(lambda: _complete(database, last_made), SETTLE, "the database caught up with the record")
        report.settled_in = time.monotonic() - settle_start
        fleet.sample(elapsed())
        _compare(database, ex, last_made, report)
        report.faults.update({f"exchange {k}": v for k, v in ex.stats.faults.items()})
        report.dead_letters = int(redis.Redis.from_url(redis_server.url).get("collector:dead-letters:total") or 0)
    return report


def _environment(database: str, proxy_port: int, redis_url: str, ex: FakeExchange) -> dict[str, str]:
    proxied = database.replace(f":{dj_database_url.parse(database)['PORT']}/", f":{proxy_port}/")
    return {**os.environ, **TUNING, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings",
            "DATABASE_URL": proxied, "REDIS_URL": redis_url, "BINANCE_WS_URL": ex.ws_url,
            "BINANCE_REST_URL": ex.rest_url, "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}


def _manage(env: dict[str, str], *args: str, direct: str | None = None) -> None:
    run_env = {**env, "DATABASE_URL": direct} if direct else env
    for _ in range(5):  # the exchange answers a REST page that is not JSON now and then: try again
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=run_env, capture_output=True,
                              text=True, timeout=120, check=False)
        if done.returncode == 0:
            return
    raise RuntimeError(f"manage.py {' '.join(args)} failed: {done.stderr[-2000:]}")


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
            rss = _rss_kib(process.pid)
            if rss is not None:
                self.report.processes[name][-1].rss_kib.append((minute, rss))


def _chaos(event: str, fleet: _Fleet, proxy: TcpProxy, redis_server: _PrivateRedis, report: SoakReport) -> None:
    if event.startswith("kill "):
        fleet.kill(event.removeprefix("kill "))
    elif event == "cut postgresql":
        proxy.cut()
        time.sleep(DATABASE_CUT)  # the outage itself: the soak's clock, not a synchronisation
        proxy.restore()
    elif event == "restart redis empty":
        redis_server.restart_empty()
    report.faults[event] += 1


class _PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        with contextlib.closing(__import__("socket").socket()) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _PrivateRedis:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)

    def _start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: _pings(self.url), 10, "the private redis-server answers")

    def restart_empty(self) -> None:
        assert self.process is not None
        self.process.kill()  # no persistence: everything it held is gone
        self.process.wait(timeout=10)
        self._start()


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def _scratch_database() -> Iterator[str]:
    base = dj_database_url.parse(postgres_url())
    name = f"soak_{os.getpid()}"
    admin = psycopg.connect(host=base["HOST"], port=base["PORT"], user=base["USER"], password=base["PASSWORD"] or None,
                            dbname=base["NAME"], autocommit=True)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    password = f":{base['PASSWORD']}" if base["PASSWORD"] else ""
    try:
        yield f"postgres://{base['USER']}{password}@{base['HOST']}:{base['PORT']}/{name}"
    finally:
        admin = psycopg.connect(host=base["HOST"], port=base["PORT"], user=base["USER"],
                                password=base["PASSWORD"] or None, dbname=base["NAME"], autocommit=True)
        with admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _query(database: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database) as connection:
        return connection.execute(sql, params).fetchall()


def _stored_everywhere(database: str) -> bool:
    rows = _query(database, "SELECT count(DISTINCT ticker_symbol) FROM streams_priceupdate")
    return int(rows[0][0]) == len(SYMBOLS)


def _complete(database: str, last_made: dict[str, int]) -> bool:
    """Every symbol stored up to its last trade made, with no hole from its first stored id."""
    rows = _query(database, "SELECT ticker_symbol, min(trade_id), max(trade_id), count(*) FROM streams_priceupdate "
                            "WHERE channel = %s GROUP BY ticker_symbol", TRADE)
    found = {symbol: (low, high) for symbol, low, high, _ in rows}
    for symbol, last in last_made.items():
        low, high = found.get(symbol, (0, -1))
        if high < last:
            return False
        below = _query(database, "SELECT count(*) FROM streams_priceupdate WHERE ticker_symbol = %s AND "
                                 "channel = %s AND trade_id <= %s", symbol, TRADE, last)[0][0]
        if below != last - low + 1:
            return False
    return True


def _compare(database: str, ex: FakeExchange, last_made: dict[str, int], report: SoakReport) -> None:
    for symbol, last in last_made.items():
        record = {t.trade_id: t for t in ex.record(symbol) if t.trade_id <= last}
        rows = _query(database, "SELECT trade_id, price, volume, trade_time, is_market_maker FROM "
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


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"soak: not within {timeout:.0f} s: {what}")
        time.sleep(1.0)
