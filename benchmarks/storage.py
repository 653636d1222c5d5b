"""Benchmarks of storage: bulk insert alone and the flush path against a plain COPY, bytes per trade, and
fake exchange burst -> client -> writer -> database.

Each runs in a scratch database of its own (Django's test-database machinery creates and migrates it,
and drops it afterwards): PostgreSQL at BENCHMARK_DATABASE_URL (default: DATABASE_URL when that is
PostgreSQL, else postgres://postgres@127.0.0.1:5432/postgres), and a temporary SQLite file. The flush path
uses the Redis at REDIS_URL: its `collector:buffer*` and flush-lock keys are deleted before and after, so
do not run it against a production Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import dj_database_url
import redis
from django.conf import settings
from django.db import connections, transaction

from benchmarks.client import BENCH_SYMBOL, Result, exchange_process
from streams import partitions
from streams.binance.client import ClientConfig, StreamClient
from streams.binance.protocol import TRADE, Trade
from streams.storage import _copy_chunks, instrument_ids, store_trades
from streams.writer import TradeWriter
from workers.buffer import BUFFER_TRADES, append_trades, flush_all
from workers.keys import BUFFER_STREAM, FLUSH_LOCK
from workers.redis import async_redis, sync_redis

_PG_DEFAULT = "postgres://postgres@127.0.0.1:5432/postgres"
_BATCH = 5_000
_INSERT_ROWS = 1_000_000  # per bulk-insert run (best of two), and the live rows measured for bytes per trade
_ARCHIVE_ROWS = 1_000_000  # REST/archive-like rows measured for bytes per trade
_FLUSH_ROWS = 500_000
_T0_US = 1_764_547_200_000_000  # 2025-12-01T00:00:00Z


def postgres_url() -> str:
    explicit = os.environ.get("BENCHMARK_DATABASE_URL")
    if explicit:
        return explicit
    default = settings.DATABASES["default"]
    if default["ENGINE"].endswith("postgresql"):
        return (f"postgres://{default['USER']}:{default['PASSWORD']}@{default['HOST'] or '127.0.0.1'}:"
                f"{default['PORT'] or 5432}/{default['NAME']}")
    return _PG_DEFAULT


@contextlib.contextmanager
def scratch_database(alias: str, url: str) -> Iterator[str]:
    """A freshly created and migrated database under `alias`, dropped afterwards."""
    config = dj_database_url.parse(url)
    config.setdefault("TEST", {})
    configured = connections.configure_settings({"default": connections.settings["default"], alias: config})
    connections.settings[alias] = configured[alias]
    creation = connections[alias].creation
    old_name = connections[alias].settings_dict["NAME"]
    creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield alias
    finally:
        connections[alias].close()
        creation.destroy_test_db(old_name, verbosity=0)
        del connections[alias]
        del connections.settings[alias]


@contextlib.contextmanager
def databases() -> Iterator[list[tuple[str, str]]]:
    """(label, alias) for PostgreSQL and SQLite scratch databases."""
    with tempfile.TemporaryDirectory() as folder, \
            scratch_database("bench_postgresql", postgres_url()) as pg, \
            scratch_database("bench_sqlite", f"sqlite:///{os.path.join(folder, 'bench.sqlite3')}") as lite:
        yield [("PostgreSQL", pg), ("SQLite", lite)]


def synthetic_trades(count: int, first_id: int = 1, *, symbol: str = BENCH_SYMBOL, live: bool = True) -> list[Trade]:
    """Trades like the exchange's: microsecond times ~0.3 ms apart, 8-decimal prices and quantities of
    varied lengths; `live` ones carry an event time and a receive time, REST/archive ones neither."""
    trades = []
    for i in range(count):
        us = _T0_US + (first_id + i) * 317
        event, received = (us + 900 + i % 700, us + 4_000 + i % 3_000) if live else (us, None)
        trades.append(Trade(symbol, TRADE, first_id + i, f"{61837 + i % 997}.{i % 100:02d}000000",
                            f"0.{(i * 7919) % 100_000:05d}000", us, event, i % 2 == 0, received_us=received))
    return trades


@dataclass
class Figure(Result):
    """A measured value rather than a rate."""

    note: str = ""

    def line(self) -> str:
        digits = 2 if self.unit == "x" else 1
        return f"{self.name:<46} {self.seconds:>12,.{digits}f} {self.unit}  ({self.note})"


@dataclass
class _Cpu:
    """CPU seconds of this process and of the PostgreSQL backend serving `alias` (read from /proc when the
    server runs on this machine; else None): with both known, what two free cores would do."""

    python: float = 0.0
    server: float | None = None


@contextlib.contextmanager
def _cpu(alias: str) -> Iterator[_Cpu]:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = int(cursor.fetchone()[0])
    used = _Cpu()
    python, server = time.process_time(), _process_seconds(pid)
    yield used
    used.python = time.process_time() - python
    after = _process_seconds(pid)
    used.server = after - server if after is not None and server is not None else None


def _process_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime (proc(5))


def _cpu_figure(name: str, rows: int, used: _Cpu) -> Figure:
    python_us = used.python / rows * 1e6
    if used.server is None:
        return Figure(name, 0, python_us, "µs/row", "Python; the server's is not on this machine")
    server_us = used.server / rows * 1e6
    return Figure(name, 0, python_us + server_us, "µs/row",
                  f"Python {python_us:.2f} + PostgreSQL {server_us:.2f}; two free cores, overlapped: "
                  f"{1e6 / max(python_us, server_us):,.0f} rows/s at most")


def _execute(alias: str, sql: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)


def _baseline(alias: str, trades: Sequence[Trade]) -> float:
    """Seconds to COPY `trades` (the same text, the same batches) into an unindexed, unpartitioned table."""
    connection = connections[alias]
    _execute(alias, "DROP TABLE IF EXISTS bench_baseline")
    _execute(alias, f"CREATE TABLE bench_baseline (LIKE {partitions.TABLE})")
    ids = instrument_ids({(t.symbol, t.channel) for t in trades}, alias)
    times = [t.trade_ts for t in trades]
    start = time.perf_counter()
    for i in range(0, len(trades), _BATCH):
        with transaction.atomic(using=alias), connection.cursor() as cursor, \
                cursor.cursor.copy("COPY bench_baseline FROM STDIN") as copy:
            for chunk in _copy_chunks(trades[i:i + _BATCH], times[i:i + _BATCH], ids):
                copy.write(chunk)
    elapsed = time.perf_counter() - start
    _execute(alias, "DROP TABLE bench_baseline")
    return elapsed


def _insert(alias: str, trades: Sequence[Trade]) -> float:
    start = time.perf_counter()
    for i in range(0, len(trades), _BATCH):
        store_trades(trades[i:i + _BATCH], alias)
    return time.perf_counter() - start


def _bytes_per_row(alias: str, rows: int) -> tuple[float, float, float]:
    """(total, heap, identity index) bytes per stored trade, from pg_total_relation_size over every
    partition (heap, indexes, TOAST, free-space maps), after VACUUM ANALYZE."""
    _execute(alias, f"VACUUM ANALYZE {partitions.TABLE}")
    with connections[alias].cursor() as cursor:
        total = partitions.table_bytes(cursor)
        cursor.execute("SELECT COALESCE(sum(pg_relation_size(inhrelid)), 0) FROM pg_inherits "
                       "WHERE inhparent = %s::regclass", [partitions.TABLE])
        heap = cursor.fetchone()[0]
        cursor.execute("SELECT COALESCE(sum(pg_relation_size(indexrelid)), 0) FROM pg_index x JOIN pg_inherits i "
                       "ON i.inhrelid = x.indrelid WHERE i.inhparent = %s::regclass AND x.indisunique",
                       [partitions.TABLE])
        index = cursor.fetchone()[0]
    return total / rows, heap / rows, index / rows


def bench_postgresql_storage(alias: str) -> list[Result]:
    """store_trades alone, best of two runs of a million new trades each, against the same rows COPYed
    plainly into an unindexed table in the same run; then bytes per trade."""
    live = synthetic_trades(2 * _INSERT_ROWS)
    store_trades(live[:_BATCH], alias)  # warm up: connection, instrument, partitions
    runs = [live[_BATCH:_INSERT_ROWS], live[_INSERT_ROWS:]]
    baseline = min(_baseline(alias, run) for run in runs[:1] * 2)
    with _cpu(alias) as used:
        inserts = [_insert(alias, run) for run in runs]
    best = min(inserts)
    rows = len(runs[0])
    stored = _BATCH + sum(len(run) for run in runs)
    total, heap, index = _bytes_per_row(alias, stored)
    archive = synthetic_trades(_ARCHIVE_ROWS, symbol="ARCHUSDT", live=False)
    _execute(alias, f"TRUNCATE {partitions.TABLE}")
    _insert(alias, archive)
    archive_total, archive_heap, _ = _bytes_per_row(alias, len(archive))
    return [
        Result(f"bulk insert alone, PostgreSQL (batches of {_BATCH:,})", rows, best, "rows/s"),
        Result("  baseline: plain COPY into an unindexed table", rows, baseline, "rows/s"),
        Figure("  bulk insert / baseline", 0, baseline / best, "x", f"best of {len(inserts)} runs"),
        _cpu_figure("  bulk insert, CPU time per row", sum(len(run) for run in runs), used),
        Figure("bytes per trade, live (event + receive times)", 0, total, "bytes",
               f"{stored:,} rows; heap {heap:.1f}, identity index {index:.1f}"),
        Figure("bytes per trade, REST or archive (no such times)", 0, archive_total, "bytes",
               f"{len(archive):,} rows; heap {archive_heap:.1f}"),
    ]


def bench_flush(alias: str) -> list[Result]:
    """The flush path alone: trades already in the Redis buffer -> `flush_all` (read, decode, validate,
    store_trades, acknowledge) -> PostgreSQL, batches of COLLECTOR_FLUSH_BATCH; against a plain COPY of
    the same rows."""
    trades = synthetic_trades(_FLUSH_ROWS, symbol="FLUSHUSDT")
    baseline = _baseline(alias, trades)
    client = sync_redis()
    _clear_buffer(client)
    try:
        asyncio.run(_fill_buffer(trades))
        store_trades(synthetic_trades(10, symbol="FLUSHUSDT", first_id=10**9), alias)  # instrument, partitions
        with _cpu(alias) as used:
            start = time.perf_counter()
            done = flush_all(client, "bench", max_seconds=600.0, using=alias)
            elapsed = time.perf_counter() - start
    finally:
        _clear_buffer(client)
    if done.inserted != len(trades):
        raise RuntimeError(f"the flush stored {done.inserted} of {len(trades)} trades")
    return [Result(f"flush path: Redis buffer -> PostgreSQL (batches of {settings.COLLECTOR_FLUSH_BATCH:,})",
                   len(trades), elapsed, "rows/s"),
            Figure("  flush path / baseline", 0, baseline / elapsed, "x", "a plain COPY of the same rows"),
            _cpu_figure("  flush path, CPU time per row", len(trades), used)]


async def _fill_buffer(trades: Sequence[Trade]) -> None:
    client = async_redis()
    try:
        for i in range(0, len(trades), 50_000):
            await append_trades(client, trades[i:i + 50_000])
    finally:
        await client.aclose()


def _clear_buffer(client: redis.Redis) -> None:
    client.delete(BUFFER_STREAM, BUFFER_TRADES, FLUSH_LOCK)


def bench_insert(alias: str, label: str, total: int = 200_000, batch: int = _BATCH) -> Result:
    """store_trades alone: rows/s for batches of `batch` new trades."""
    trades = synthetic_trades(total)
    store_trades(trades[:batch], alias)  # warm up: connection, staging table
    start = time.perf_counter()
    for i in range(batch, total, batch):
        store_trades(trades[i:i + batch], alias)
    return Result(f"bulk insert alone, {label} (batches of {batch:,})", total - batch,
                  time.perf_counter() - start, "rows/s")


async def _pipeline(ws_url: str, rest_url: str, alias: str, count: int, start_burst: Callable[[], None]
                    ) -> float:
    config = ClientConfig.for_streams(ws_url, rest_url, [(BENCH_SYMBOL, TRADE)], queue_size=50_000,
                                      silence_timeout=30.0)
    writer = TradeWriter(batch_size=5_000, flush_interval=0.2, max_pending=200_000, using=alias)
    writer.start()
    received = 0
    async with StreamClient(config) as client:
        while client.stats.state != "connected":
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        start_burst()
        batch = await client.next_batch(5_000)
        start = time.perf_counter()
        while True:
            await writer.put_many(batch)
            received += len(batch)
            if received >= count:
                break
            batch = await client.next_batch(5_000)
    await writer.close()
    elapsed = time.perf_counter() - start
    if writer.stats.stored != count:
        raise RuntimeError(f"stored {writer.stats.stored} of {count} trades")
    return elapsed


def bench_pipeline(alias: str, label: str, count: int = 200_000) -> Result:
    """Fake exchange burst -> StreamClient -> TradeWriter (batches of 5,000) -> database."""
    with exchange_process() as (ws_url, rest_url, burst, _):
        elapsed = asyncio.run(_pipeline(ws_url, rest_url, alias, count, lambda: burst(count)))
    return Result(f"exchange -> client -> {label}, batch mode", count, elapsed)


def run_storage_benchmarks(count: int) -> list[Result]:
    results: list[Result] = []
    with databases() as targets:
        for label, alias in targets:
            if label == "PostgreSQL":
                results += bench_postgresql_storage(alias)
                _execute(alias, f"TRUNCATE {partitions.TABLE}")
                results += bench_flush(alias)
                _execute(alias, f"TRUNCATE {partitions.TABLE}")
            else:
                results.append(bench_insert(alias, label))
        for label, alias in targets:
            results.append(bench_pipeline(alias, label, count))
    return results
