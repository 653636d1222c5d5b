"""Day files of the lake: written whole in the Hive layout that DuckDB, polars and pyarrow read as partitions,
and every kind of damage found by verification. No Django: the lake is plain files."""

from __future__ import annotations

import os
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from streams.binance.protocol import AGG_TRADE, TRADE, Trade
from streams.lake import files
from streams.lake.layout import DayKey, Lake, key_of
from streams.lake.schema import table_from_trades

DAY = date(2026, 11, 1)
MIDNIGHT_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z


def trades(first_id: int, count: int, channel: str = TRADE) -> list[Trade]:
    return [Trade("BTCUSDT", channel, first_id + n, f"{61_000 + n}.12345678", "0.00100000", MIDNIGHT_MS + n * 1000,
                  MIDNIGHT_MS + n * 1000 + 1, n % 2 == 0, (n * 3 if channel == AGG_TRADE else None),
                  (n * 3 + 2 if channel == AGG_TRADE else None), (MIDNIGHT_MS + n * 1000 + 5) * 1000)
            for n in range(count)]


def written(tmp_path: Path, count: int = 1000, key: DayKey | None = None) -> tuple[Lake, DayKey, files.DayFile]:
    lake = Lake.at(str(tmp_path))
    key = key or DayKey("spot", "BTCUSDT", TRADE, DAY)
    return lake, key, files.write_day(lake, key, table_from_trades(trades(500, count)))


def test_a_day_file_sits_in_the_hive_layout_and_holds_exactly_what_was_given(tmp_path: Path) -> None:
    lake, key, day_file = written(tmp_path)
    path = tmp_path / "trades/market=spot/channel=trade/ticker_symbol=BTCUSDT/date=2026-11-01/" \
                      "spot-BTCUSDT-trade-2026-11-01.parquet"
    assert path.is_file() and key_of(str(path)) == key
    size = path.stat().st_size
    assert (day_file.rows, day_file.first_id, day_file.last_id, day_file.bytes) == (1000, 500, 1499, size)
    table = files.read_day(lake, key)
    row = table.slice(7, 1).to_pylist()[0]
    assert row["price"] == Decimal("61007.12345678") and row["volume"] == Decimal("0.00100000")
    assert row["trade_time"].isoformat() == "2026-11-01T00:00:07+00:00" and row["is_market_maker"] is False
    assert row["received_time"].isoformat() == "2026-11-01T00:00:07.005000+00:00"
    metadata = pq.read_metadata(path)
    statistics = metadata.row_group(0).column(0).statistics
    assert statistics is not None and statistics.min == 500  # readers skip row groups by id and time
    assert {os.path.basename(p) for p in os.listdir(path.parent)} == {path.name}  # no temporary file left


def test_duckdb_polars_and_pyarrow_read_the_lake_with_its_partitions_in_one_line(tmp_path: Path) -> None:
    lake, _, _ = written(tmp_path)
    files.write_day(lake, DayKey("um", "BTCUSDT", TRADE, DAY), table_from_trades(trades(9, 3)))
    files.write_day(lake, DayKey("spot", "BTCUSDT", AGG_TRADE, DAY), table_from_trades(trades(1, 4, AGG_TRADE)))
    lake_files = f"{tmp_path}/trades/**/*.parquet"
    relation = duckdb.sql("SELECT market, channel, ticker_symbol, date, count(*) n, sum(price) FROM read_parquet("
                          "$files, hive_partitioning=true) GROUP BY ALL ORDER BY ALL", params={"files": lake_files})
    assert relation is not None
    found = relation.fetchall()
    assert [(m, c, s, str(d), n) for m, c, s, d, n, _ in found] == [
        ("spot", "aggTrade", "BTCUSDT", "2026-11-01", 4), ("spot", "trade", "BTCUSDT", "2026-11-01", 1000),
        ("um", "trade", "BTCUSDT", "2026-11-01", 3)]
    frame = pl.scan_parquet(f"{tmp_path}/trades/**/*.parquet", hive_partitioning=True).filter(
        pl.col("market") == "spot", pl.col("channel") == "trade").collect()
    assert frame.height == 1000 and frame["price"].dtype == pl.Decimal(28, 8)
    table = ds.dataset(f"{tmp_path}/trades", partitioning="hive").to_table(filter=ds.field("channel") == "aggTrade")
    assert table.column("first_trade_id").to_pylist() == [0, 3, 6, 9]


def test_a_day_with_ids_out_of_order_or_twice_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    lake = Lake.at(str(tmp_path))
    key = DayKey("spot", "BTCUSDT", TRADE, DAY)
    rows = trades(1, 5)
    for bad in ([*rows[:3], rows[2], *rows[3:]], [rows[1], rows[0], *rows[2:]]):
        with pytest.raises(files.LakeError, match="not strictly increasing"):
            files.write_day(lake, key, table_from_trades(bad))
    assert not files.exists(lake, key) and list(files.day_keys(lake)) == []


def test_a_day_sealed_again_replaces_its_file_in_one_step(tmp_path: Path) -> None:
    lake, key, first = written(tmp_path, 10)
    second = files.write_day(lake, key, table_from_trades(trades(500, 12)))
    assert second.rows == 12 and second.sha256 != first.sha256
    assert list(files.day_keys(lake)) == [key] and files.read_day(lake, key).num_rows == 12


def test_verification_finds_a_flipped_byte_a_missing_file_a_short_file_and_a_hole(tmp_path: Path) -> None:
    lake, key, day_file = written(tmp_path)
    assert files.verify_day(lake, key, day_file, complete=True) == []
    path = Path(lake.full_path(key.path))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = files.verify_day(lake, key, day_file, complete=True)
    assert problems and "SHA-256" in problems[0]
    files.write_day(lake, key, table_from_trades(trades(500, 999)))  # one row short
    short = files.verify_day(lake, key, day_file, complete=True)
    assert any("999 rows" in p for p in short)
    holey = [t for t in trades(500, 1000) if t.trade_id != 700]
    holey_file = files.write_day(lake, key, table_from_trades(holey))
    assert files.verify_day(lake, key, holey_file, complete=False) == []
    assert files.verify_day(lake, key, holey_file, complete=True) == [
        "1 ids are missing inside a day sealed complete"]
    path.unlink()
    assert files.verify_day(lake, key, day_file, complete=True) == ["the file is missing"]


def test_decimals_the_database_could_not_hold_are_refused_not_rounded() -> None:
    long_fraction = Trade("BTCUSDT", TRADE, 1, "1.123456789", "1.0", MIDNIGHT_MS, MIDNIGHT_MS, True)
    with pytest.raises(pa.ArrowInvalid):
        table_from_trades([long_fraction])
