"""Export: one file per stream and day in the lake's Hive layout (or flat), read back with pyarrow, DuckDB and
polars (Parquet in the dataset's columns; sealed days are the lake's files, copied and checked) or compared
with the archive's own CSV, equal to the exchange's record; days that are not complete are exported with a
warning or refused; files are put in place under a fresh name, never through a link planted beside them."""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import httpx
import polars as pl
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from streams import dataset
from streams.binance.protocol import TRADE, Trade, datetime_from_exchange
from streams.fake.exchange import FakeExchange, running_exchange
from streams.fake.market import micros
from streams.lake.layout import DayKey
from streams.lake.schema import FILE_SCHEMA
from streams.models import PriceUpdate, SealedDay
from tests.history import BOTH, DATABASE_ONLY, FIRST, LAST, as_rows, day_after, history, table_rows
from workers.archive_import import import_range

pytestmark = pytest.mark.django_db(transaction=True)

TODAY = datetime.now(UTC).date()
START = TODAY - timedelta(days=4)


@contextmanager
def imported(settings: Any, seed: int) -> Iterator[FakeExchange]:
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=seed, history_from=START, history_rate=0.02) as ex:
        settings.BINANCE_REST_URL = settings.BINANCE_ARCHIVE_URL = ex.rest_url
        import_range(["BTCUSDT"], START, TODAY - timedelta(days=1))
        yield ex


def day_trades(ex: FakeExchange, day: date) -> list[Trade]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000
    return [t for t in ex.record("BTCUSDT") if start <= t.trade_ts < start + 86_400_000]


def export(out: Path, *args: str) -> str:
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command("export_trades", "BTCUSDT", *args, "--out", str(out), stdout=stdout, stderr=stderr)
    return stdout.getvalue() + stderr.getvalue()


def test_the_parquet_files_in_the_hive_layout_read_back_equal_the_record(settings: Any, tmp_path: Path) -> None:
    # The columns are the dataset's (trade_id, price, volume, trade_time, ...), as in the lake, where they
    # were the archive's (id, qty, quoteQty, time, ...) before: one vocabulary everywhere.
    first, last = START + timedelta(days=1), START + timedelta(days=2)
    with imported(settings, 51) as ex:
        output = export(tmp_path, "--from", str(first), "--to", str(last), "--format", "parquet")
        record = day_trades(ex, first) + day_trades(ex, last)
    folders = [tmp_path / DayKey("spot", "BTCUSDT", TRADE, d).folder for d in (first, last)]
    assert [sorted(p.name for p in folder.iterdir()) for folder in folders] == [
        [f"spot-BTCUSDT-trade-{first}.parquet"], [f"spot-BTCUSDT-trade-{last}.parquet"]]
    assert "WARNING" not in output and f"2 files, {len(record):,} trades" in output
    table = pq.read_table(tmp_path / "trades", partitioning="hive")
    assert table.select(FILE_SCHEMA.names).cast(FILE_SCHEMA).to_pylist() == [
        {"trade_id": t.trade_id, "price": Decimal(t.price_text), "volume": Decimal(t.quantity_text),
         "trade_time": datetime_from_exchange(micros(t.trade_ts)), "event_time": datetime_from_exchange(
             micros(t.trade_ts)), "is_market_maker": t.is_buyer_maker, "received_time": None,
         "first_trade_id": None, "last_trade_id": None} for t in record]
    assert set(table.column("ticker_symbol").to_pylist()) == {"BTCUSDT"}  # from the folders
    meta = pq.read_metadata(folders[0] / f"spot-BTCUSDT-trade-{first}.parquet").metadata
    assert meta is not None
    assert (meta[b"ticker_symbol"], meta[b"market"], meta[b"channel"]) == (b"BTCUSDT", b"spot", b"trade")


def test_the_csv_export_is_the_archives_own_file_for_the_day(settings: Any, tmp_path: Path) -> None:
    day = START + timedelta(days=2)
    with imported(settings, 52) as ex:
        export(tmp_path, "--from", str(day), "--to", str(day), "--format", "csv", "--flat")
        export(tmp_path / "hive", "--from", str(day), "--to", str(day), "--format", "csv")
        archived = httpx.get(f"{ex.rest_url}/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-{day}.zip").content
    with zipfile.ZipFile(io.BytesIO(archived)) as archive:
        original = archive.read(f"BTCUSDT-trades-{day}.csv")
    exported = gzip.decompress((tmp_path / f"BTCUSDT-trades-{day}.csv.gz").read_bytes())
    assert exported == original and len(original.splitlines()) > 1000
    folder = tmp_path / "hive" / DayKey("spot", "BTCUSDT", TRADE, day).folder
    assert gzip.decompress((folder / f"BTCUSDT-trades-{day}.csv.gz").read_bytes()) == original


def test_a_day_with_holes_is_exported_with_a_warning_or_refused_with_complete_only(
        settings: Any, tmp_path: Path) -> None:
    holed, whole = START + timedelta(days=1), START + timedelta(days=2)
    with imported(settings, 53) as ex:
        gone = day_trades(ex, holed)[50].trade_id
        PriceUpdate.objects.filter(ticker_symbol="BTCUSDT", channel=TRADE, trade_id=gone).delete()
        call_command("coverage", "--recheck", stdout=io.StringIO())
        with pytest.raises(CommandError, match=f"1 days refused .*{holed}: holes \\(holes {gone}..{gone}\\)"):
            export(tmp_path / "strict", "--from", str(holed), "--to", str(whole), "--format", "csv",
                   "--complete-only", "--flat")
        assert [p.name for p in (tmp_path / "strict").iterdir()] == [f"BTCUSDT-trades-{whole}.csv.gz"]
        output = export(tmp_path / "lenient", "--from", str(holed), "--to", str(whole), "--format", "parquet",
                        "--flat")
    assert f"WARNING: exported though BTCUSDT {holed}: holes (holes {gone}..{gone})" in output
    table = pq.read_table(tmp_path / "lenient" / f"spot-BTCUSDT-trade-{holed}.parquet")
    assert gone not in table.column("trade_id").to_pylist() and table.num_rows == len(day_trades(ex, holed)) - 1


def test_days_without_trades_give_no_file(settings: Any, tmp_path: Path) -> None:
    with imported(settings, 54):
        output = export(tmp_path, "--from", str(START - timedelta(days=2)), "--to", str(START), "--format", "csv",
                        "--flat")
    assert [p.name for p in tmp_path.iterdir()] == [f"BTCUSDT-trades-{START}.csv.gz"]
    assert f"BTCUSDT {START - timedelta(days=1)}: no trades stored, no file" in output


def test_sealed_days_are_the_lakes_files_copied_and_the_rest_encoded_alike(settings: Any, tmp_path: Path) -> None:
    out = tmp_path / "export"
    with history(settings, tmp_path) as h:
        output = export(out, "--from", str(FIRST), "--to", str(LAST), "--format", "parquet")
        manifests = {row.day: row for row in SealedDay.objects.all()}
        whole = dataset.trades("BTCUSDT", FIRST, day_after(LAST))
    assert sorted(manifests) == [FIRST + timedelta(days=n) for n in range(6)]  # all but DATABASE_ONLY
    for day, manifest in manifests.items():
        key = DayKey("spot", "BTCUSDT", TRADE, day)
        copied = (out / key.path).read_bytes()
        assert copied == (h.lake_root / key.path).read_bytes()
        assert hashlib.sha256(copied).hexdigest() == manifest.sha256
        assert f"{out / key.path} {manifest.rows:,} trades (the lake's sealed file)" in output
    assert f"spot-BTCUSDT-trade-{DATABASE_ONLY}.parquet {len(h.record(DATABASE_ONLY, day_after(DATABASE_ONLY))):,} " \
           "trades\n" in output  # encoded from the database, not copied
    # The export is a dataset of its own: DuckDB and polars read it with the partitions as columns.
    files = f"{out}/trades/**/*.parquet"
    read = duckdb.execute("SELECT trade_id, price, ticker_symbol, market, channel FROM read_parquet($f, "
                          "hive_partitioning=true) ORDER BY trade_id", {"f": files}).fetchall()
    assert read == list(zip(*(whole.column(n).to_pylist() for n in ("trade_id", "price", "ticker_symbol", "market",
                                                                      "channel")), strict=True))
    frame = pl.scan_parquet(files, hive_partitioning=True).filter(pl.col("date") == DATABASE_ONLY).collect()
    assert frame.height == len(h.record(DATABASE_ONLY, day_after(DATABASE_ONLY)))
    assert table_rows(whole) == as_rows(h.record(FIRST, day_after(LAST)))


def test_a_lake_file_that_differs_from_its_manifest_is_not_exported(settings: Any, tmp_path: Path) -> None:
    out = tmp_path / "export"
    with history(settings, tmp_path) as h:
        key = DayKey("spot", "BTCUSDT", TRADE, BOTH)
        damaged = bytearray((h.lake_root / key.path).read_bytes())
        damaged[200] ^= 0x01
        (h.lake_root / key.path).write_bytes(bytes(damaged))
        with pytest.raises(CommandError, match=f"1 days failed: spot BTCUSDT trade {BOTH}: the lake's file differs"
                                               " from its manifest"):
            export(out, "--from", str(LAST - timedelta(days=2)), "--to", str(LAST), "--format", "parquet", "--flat")
    assert sorted(p.name for p in out.iterdir()) == [f"spot-BTCUSDT-trade-{d}.parquet" for d in (
        LAST - timedelta(days=2), LAST)]  # the other days, and no temporary file left behind


def test_links_planted_in_the_output_folder_are_replaced_never_written_through(settings: Any, tmp_path: Path) -> None:
    # Before: the export wrote `<file>.part` with open(), which followed a symlink planted at that name and
    # overwrote the file it pointed to (here a victim outside the output folder).
    day = START + timedelta(days=1)
    out = tmp_path / "out"
    out.mkdir()
    victims = [tmp_path / "victim-part.txt", tmp_path / "victim-file.txt"]
    for victim in victims:
        victim.write_text("precious")
    (out / f"BTCUSDT-trades-{day}.csv.gz.part").symlink_to(victims[0])
    (out / f"BTCUSDT-trades-{day}.csv.gz").symlink_to(victims[1])
    with imported(settings, 55) as ex:
        export(out, "--from", str(day), "--to", str(day), "--format", "csv", "--flat")
    assert [v.read_text() for v in victims] == ["precious", "precious"]
    written = out / f"BTCUSDT-trades-{day}.csv.gz"
    assert not written.is_symlink() and len(gzip.decompress(written.read_bytes()).splitlines()) == len(
        day_trades(ex, day))
    assert oct(written.stat().st_mode & 0o777) == "0o644"


def test_a_date_outside_the_dataset_is_a_one_line_error(tmp_path: Path) -> None:
    # Before: --to 9999-12-31 ran until date arithmetic overflowed, with a traceback.
    with pytest.raises(CommandError, match=r"^--to 9999-12-31 is outside the dataset \(2017-01-01 to "):
        export(tmp_path, "--from", "2026-11-01", "--to", "9999-12-31")
    with pytest.raises(CommandError, match=r"^--from 1970-01-01 is outside the dataset"):
        export(tmp_path, "--from", "1970-01-01", "--to", "2026-11-01")
    with pytest.raises(CommandError, match="--format csv writes the spot archive's layout; use --format parquet "
                                           "for um"):
        export(tmp_path, "--from", "2026-11-01", "--to", "2026-11-01", "--format", "csv", "--market", "um")
