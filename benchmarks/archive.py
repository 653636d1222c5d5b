"""Benchmarks of the archive import and the export (`manage.py benchmark --only archive [--trades N]`).

A month of about N trades (the fake exchange's history of last month, served by its archive on loopback),
in a scratch PostgreSQL database made for the run and dropped after it:
- baseline: `store_trades` alone on the same trades, already parsed, in the import's batch size: the
  ceiling of any import that stores through it; and the file parsed alone (no storing);
- import: from the monthly file's CHECKSUM to the last committed row (download, SHA-256, unzip, parse,
  store), and the ratio to the baseline;
- export: every day of the month to Parquet and to CSV, and the database's own COPY of the same rows
  read by psycopg (nothing done with them) as their baseline.
Each is measured twice, alternating, into an emptied table, and the better run of each is shown.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
from django.conf import settings
from django.db import connection, connections

from benchmarks.client import Result
from streams import queries
from streams.archive import TRADES, Period, day_bounds
from streams.binance.protocol import TRADE, Trade
from streams.export import export_day
from streams.fake.exchange import running_exchange
from streams.fake.market import micros
from streams.lake.layout import DayKey
from streams.storage import store_trades
from workers.archive_import import ArchiveImporter

SYMBOL = "BTCUSDT"
BASELINE_SYMBOL = "ETHUSDT"  # the baseline's copy of the trades: another instrument, the same table


@contextlib.contextmanager
def scratch_default_database() -> Iterator[None]:
    """The default database swapped for a new, migrated one (every thread's connection follows), dropped after."""
    if connection.vendor != "postgresql":
        raise RuntimeError("the archive benchmark needs PostgreSQL in DATABASE_URL")
    creation = connection.creation
    old_name = connection.settings_dict["NAME"]
    connection.settings_dict.setdefault("TEST", {})["NAME"] = f"bench_archive_{os.getpid()}"
    creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield
    finally:
        connections.close_all()
        creation.destroy_test_db(old_name, verbosity=0)


def run_archive_benchmarks(count: int, rounds: int = 2) -> list[Result]:
    """Each measurement `rounds` times, alternating, into an emptied table; the best of each (a shared
    machine's noise only ever slows a run down)."""
    month = (datetime.now(UTC).date().replace(day=1) - timedelta(days=1)).replace(day=1)  # last month: published
    period = Period(month, monthly=True)
    rate = count / ((period.end - month).days * 86_400.0)
    with scratch_default_database(), running_exchange(symbols={SYMBOL: 0.0}, seed=11, history_from=month,
                                                      history_rate=rate) as ex:
        settings.BINANCE_ARCHIVE_URL = settings.BINANCE_REST_URL = ex.rest_url
        zipped = ex.archive.file_bytes(SYMBOL, period.label)  # built before any clock starts: the exchange's work
        trades = ex.archive.trades(SYMBOL, period.label)
        gc.collect()
        gc.freeze()  # the exchange's record (millions of objects) in this process is not the import's to scan
        stored, parsed, imported = [], [], []
        for _ in range(rounds):
            _empty()
            stored.append(_baseline(trades))
            parsed.append(_parse_alone(zipped))
            _empty()
            imported.append(_import(period))
        best = max(stored, key=lambda r: r.rate)
        result = max(imported, key=lambda r: r.rate)
        result = Result(f"{result.name} (x{result.rate / best.rate:.2f} of the baseline)", result.count,
                        result.seconds)
        results = [best, max(parsed, key=lambda r: r.rate), result, *_exports(period, rounds)]
        gc.unfreeze()
        return results


def _empty() -> None:
    """The scratch database's trades gone (its own table: the benchmark's, not a layout's promise)."""
    from streams.models import StoredTrade

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {StoredTrade._meta.db_table}")


def _import(period: Period) -> Result:
    """Into the lake (every day of the month is cold), from the CHECKSUM to the files in place."""
    started = time.perf_counter()
    with ArchiveImporter(force=True, cold_before=datetime.now(UTC).date() + timedelta(days=1)) as importer:
        report = importer.import_periods(SYMBOL, [period])
    return Result("archive import, file -> sealed lake days", report.trades_read, time.perf_counter() - started)


def _baseline(trades: list[Trade]) -> Result:
    copies = [t._replace(symbol=BASELINE_SYMBOL, trade_ts=micros(t.trade_ts), event_ts=micros(t.trade_ts))
              for t in trades]
    batch = 30_000  # what the import's chunks of CSV hold
    started = time.perf_counter()
    for i in range(0, len(copies), batch):
        store_trades(copies[i:i + batch])
    return Result("baseline: store_trades alone, same trades parsed", len(copies), time.perf_counter() - started,
                  "rows/s")


def _parse_alone(zipped: bytes) -> Result:
    """pyarrow's own CSV reader on the zip's member: the bare read the import is measured against."""
    started = time.perf_counter()
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive, archive.open(archive.namelist()[0]) as raw:
        table = pa_csv.read_csv(raw, read_options=pa_csv.ReadOptions(column_names=list(TRADES.columns)))
    assert isinstance(table, pa.Table)
    return Result("baseline: pyarrow's CSV read of the zip alone", table.num_rows, time.perf_counter() - started)


def _exports(period: Period, rounds: int) -> list[Result]:
    best: dict[str, Result] = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(rounds):
            for fmt in ("parquet", "csv"):
                started, rows = time.perf_counter(), 0
                for day in period.days():
                    rows += export_day(DayKey("spot", SYMBOL, TRADE, day), fmt, Path(folder), flat=True).rows
                result = Result(f"export to {fmt}, a month of days", rows, time.perf_counter() - started, "rows/s")
                best[fmt] = max(best.get(fmt, result), result, key=lambda r: r.rate)
            started, rows = time.perf_counter(), 0
            with connection.cursor() as cursor:
                for day in period.days():
                    start, end = day_bounds(day)
                    statement, params = queries.dataset_copy(SYMBOL, TRADE, start, end)
                    with cursor.cursor.copy(statement, params) as copy:
                        rows += sum(1 for _ in copy)
            result = Result("baseline: the database's COPY alone, same rows", rows, time.perf_counter() - started,
                            "rows/s")
            best["copy"] = max(best.get("copy", result), result, key=lambda r: r.rate)
    copied = best.pop("copy")
    return [copied, *(Result(f"{r.name} (x{r.rate / copied.rate:.2f} of COPY alone)", r.count, r.seconds, r.unit)
                      for r in best.values())]
