"""Benchmarks of storage: bulk insert alone, and fake exchange burst -> client -> writer -> database.

Each runs in a scratch database of its own (Django's test-database machinery creates and migrates it,
and drops it afterwards): PostgreSQL at BENCHMARK_DATABASE_URL (default: DATABASE_URL when that is
PostgreSQL, else postgres://postgres@127.0.0.1:5432/postgres), and a temporary SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dj_database_url
from django.conf import settings
from django.db import connections

from streams.benchmarks import BENCH_SYMBOL, Result, exchange_process
from streams.binance.client import ClientConfig, StreamClient
from streams.binance.protocol import TRADE, Trade
from streams.storage import store_trades
from streams.writer import TradeWriter

_PG_DEFAULT = "postgres://postgres@127.0.0.1:5432/postgres"


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
            scratch_database("bench_sqlite", f"sqlite:///{Path(folder) / 'bench.sqlite3'}") as lite:
        yield [("PostgreSQL", pg), ("SQLite", lite)]


def synthetic_trades(count: int, first_id: int = 1) -> list[Trade]:
    return [Trade(BENCH_SYMBOL, TRADE, first_id + i, f"{61837 + i % 997}.{i % 100:02d}000000", "0.01200000",
                  1723161255342 + i, 1723161255343 + i, i % 2 == 0) for i in range(count)]


def bench_insert(alias: str, label: str, total: int = 200_000, batch: int = 5_000) -> Result:
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
    results = []
    with databases() as targets:
        for label, alias in targets:
            results.append(bench_insert(alias, label))
        for label, alias in targets:
            results.append(bench_pipeline(alias, label, count))
    return results
