"""The scale run (`manage.py benchmark --only scale --streams N`): N symbol streams on one small machine.

The fake exchange with N symbols, the Procfile's `beat`, `worker` and `streams` processes as production runs
them (production's settings), a scratch PostgreSQL database and a private Redis. Measured (docs/benchmarks.md, "Scale"):
- start-up: every stream connected, how long after the workers started, with how many connection attempts;
- a quiet market: CPU of beat + worker + streams over a minute, RSS per stream, Redis connections per process;
- a busy market (`--rate` trades/s over all symbols): CPU per trade in `streams`, and the database equal to
  the exchange's record for every stream;
- a burst (`--burst` trades made at once over 10 symbols): exchange -> streams -> Redis -> flush ->
  PostgreSQL, trades/s until the last one is committed (the flush path alone is measured by `--only storage`);
- a stop: SIGTERM to the streams worker while every exchange connection is silent, until it exits.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from benchmarks.harness import (
    ROOT,
    PrivateRedis,
    cpu_seconds,
    environment,
    manage,
    query,
    redis_connections,
    rss_kib,
    scratch_database,
    wait_until,
)
from streams.binance.protocol import TRADE
from streams.fake.exchange import FakeExchange, running_exchange
from workers.keys import PREFIX

QUIET_SECONDS = 60.0
BUSY_SECONDS = 60.0


def _procfile_commands(streams: int) -> dict[str, list[str]]:
    return {
        "streams": ["-m", "celery", "-A", "project", "worker", "-Q", "streams", "-P", "threads", "-c",
                    str(streams + 50), "-n", "streams@%h", "-E", "--without-gossip", "--without-mingle"],
        "worker": ["-m", "celery", "-A", "project", "worker", "-Q", "celery", "-P", "threads", "-c", "4",
                   "-n", "worker@%h", "-E", "--without-gossip", "--without-mingle"],
        "beat": ["-m", "celery", "-A", "project", "beat", "-S", "django", "--pidfile="],
    }


@dataclass
class ScaleReport:
    streams: int
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)


def run_scale(streams: int, rate: float, burst: int, say: Callable[[str], None] = print) -> ScaleReport:
    for noisy in ("streams.fake", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    report = ScaleReport(streams)
    symbols = [f"X{i:04d}USDT" for i in range(streams)]
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scale-")))
        database = stack.enter_context(scratch_database())
        redis_server = stack.enter_context(PrivateRedis(workdir))
        ex = stack.enter_context(running_exchange(symbols=dict.fromkeys(symbols, 0.0), seed=7))
        env = environment(database, redis_server.url, ex, {})
        manage(env, "migrate", "--noinput")
        started = time.monotonic()
        manage(env, "streams", "enable", "--all", "--quote", "USDT")
        say(f"scale: {streams} streams enabled in {time.monotonic() - started:.1f} s; logs in {workdir}")
        processes = stack.enter_context(_processes(env, workdir, streams))
        started = time.monotonic()
        wait_until(lambda: _all_connected(ex, symbols), 600, "every stream connected")
        report.add(f"all {streams} streams connected {time.monotonic() - started:.1f} s after the workers started, "
                   f"with {ex.stats.connection_attempts} connection attempts (aim: 60 s, 15 attempts at 1,500)")
        time.sleep(15.0)  # settle: the start-up's resume checks and first statuses are not the idle load
        _quiet(processes, redis_server.port, streams, report)
        run = _Run(ex, symbols, database, processes, report, say)
        _busy(run, rate)
        _burst(run, burst)
        _sigterm(ex, processes["streams"], redis_server.url, streams, report)
    return report


def _sigterm(ex: FakeExchange, process: subprocess.Popen[bytes], redis_url: str, streams: int,
             report: ScaleReport) -> None:
    """SIGTERM to the streams worker while every exchange connection has gone silent both ways (it reads
    nothing, answers no ping and no close frame): the worst case for a stop (the promise: within 15 s)."""
    ex.inject("stall")  # every connection, no end
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        report.add("SIGTERM to the streams worker, exchange silent: still running after 120 s (aim: 15 s)")
        return
    seconds = time.monotonic() - started
    leases = len(redis.Redis.from_url(redis_url).keys(f"{PREFIX}:lease:*"))
    report.add(f"SIGTERM to the streams worker with {streams} streams, every exchange connection silent: exited "
               f"in {seconds:.1f} s with exit code {process.returncode}, {leases} leases left (aim: 15 s, 0)")


@contextlib.contextmanager
def _processes(env: dict[str, str], workdir: Path, streams: int) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, command in _procfile_commands(streams).items():
            log = (workdir / f"{name}.log").open("ab")
            processes[name] = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=log,
                                               stderr=subprocess.STDOUT)
            log.close()
        yield processes
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _all_connected(ex: FakeExchange, symbols: list[str]) -> bool:
    return all(ex.active_connections(f"{s.lower()}@trade") == 1 for s in symbols)


def _quiet(processes: dict[str, subprocess.Popen[bytes]], redis_port: int, streams: int, report: ScaleReport) -> None:
    before = {name: cpu_seconds(p.pid) for name, p in processes.items()}
    time.sleep(QUIET_SECONDS)  # the measurement window itself
    used = {name: cpu_seconds(p.pid) - before[name] for name, p in processes.items()}
    total = sum(used.values()) / QUIET_SECONDS * 100
    parts = ", ".join(f"{name} {seconds / QUIET_SECONDS * 100:.1f} %" for name, seconds in used.items())
    report.add(f"quiet market, CPU of one core: {total:.1f} % in all ({parts}) (aim: 15 %)")
    rss = {name: rss_kib(p.pid) or 0 for name, p in processes.items()}
    # The worker runs the same code and imports without a stream: the streams worker's growth over it is
    # what the streams cost.
    per_stream = (rss["streams"] - rss["worker"]) / streams
    report.add(f"RSS: streams {rss['streams'] / 1024:.0f} MiB, {per_stream:.0f} KiB per stream over the worker's "
               f"{rss['worker'] / 1024:.0f} MiB (same code, no stream; aim 200 KB); beat {rss['beat'] / 1024:.0f} MiB")
    connections = {name: redis_connections(p.pid, redis_port) for name, p in processes.items()}
    report.add("Redis connections: " + ", ".join(f"{name} {n}" for name, n in connections.items())
               + " (aim: 50 per process)")


@dataclass
class _Run:
    ex: FakeExchange
    symbols: list[str]
    database: str
    processes: dict[str, subprocess.Popen[bytes]]
    report: ScaleReport
    say: Callable[[str], None]


def _busy(run: _Run, rate: float) -> None:
    ex, symbols, database, report = run.ex, run.symbols, run.database, run.report
    processes, say = run.processes, run.say
    marks = {s: ex.record(s)[-1].trade_id if ex.record(s) else None for s in symbols}
    made_before = sum(len(ex.record(s)) for s in symbols)
    cpu_before = cpu_seconds(processes["streams"].pid)
    ex.set_rates(dict.fromkeys(symbols, rate / len(symbols)))
    time.sleep(BUSY_SECONDS)  # the measurement window itself
    ex.set_rates(dict.fromkeys(symbols, 0.0))
    cpu = cpu_seconds(processes["streams"].pid) - cpu_before
    made = sum(len(ex.record(s)) for s in symbols) - made_before
    report.add(f"busy market, {made / BUSY_SECONDS:,.0f} trades/s over {len(symbols)} streams: streams CPU "
               f"{cpu / max(made, 1) * 1e6:.0f} µs per trade (aim: 40 µs)")
    say("busy market done; waiting for the database to catch up")
    last = {s: ex.record(s)[-1].trade_id for s in symbols if ex.record(s)}
    wait_until(lambda: _stored_through(database, last), 600, "the database caught up with the busy market")
    missing = duplicated = 0
    for symbol, newest in last.items():
        mark = marks[symbol]
        first = mark + 1 if mark is not None else ex.record(symbol)[0].trade_id
        rows = query(database, "SELECT count(*), count(DISTINCT trade_id), min(trade_id), max(trade_id) FROM "
                               "streams_priceupdate WHERE ticker_symbol = %s AND channel = %s AND trade_id "
                               "BETWEEN %s AND %s", symbol, TRADE, first, newest)[0]
        missing += (newest - first + 1) - rows[1]
        duplicated += rows[0] - rows[1]
    report.add(f"busy market: database against the record: {missing} missing, {duplicated} duplicated")


def _stored_through(database: str, last: dict[str, int]) -> bool:
    rows = dict(query(database, "SELECT ticker_symbol, max(trade_id) FROM streams_priceupdate GROUP BY ticker_symbol"))
    return all(rows.get(symbol, -1) >= newest for symbol, newest in last.items())


def _burst(run: _Run, burst: int) -> None:
    ex, symbols, database, report, say = run.ex, run.symbols[:10], run.database, run.report, run.say
    before = dict(query(database, "SELECT ticker_symbol, count(*) FROM streams_priceupdate GROUP BY ticker_symbol"))
    started = time.monotonic()
    for symbol in symbols:
        ex.burst(symbol, burst // len(symbols))
    last = {s: ex.record(s)[-1].trade_id for s in symbols}
    wait_until(lambda: _stored_through(database, last), 900, "the burst committed")
    seconds = time.monotonic() - started
    after = dict(query(database, "SELECT ticker_symbol, count(*) FROM streams_priceupdate GROUP BY ticker_symbol"))
    stored = sum(after.get(s, 0) - before.get(s, 0) for s in symbols)
    report.add(f"burst of {stored:,} trades over {len(symbols)} streams, exchange to committed rows: "
               f"{stored / seconds:,.0f} trades/s (aim: 100,000)")
    say("burst done")
