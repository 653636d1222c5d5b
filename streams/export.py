"""Stored trades exported one file per symbol and UTC day: `<SYMBOL>-trades-YYYY-MM-DD.csv.gz` in
the archive's own columns and order, or `.parquet` with typed columns that pandas, polars and DuckDB read as
they are.

Parquet columns: `id` int64, `price` and `qty` decimal128(28, 8) (the exchange's exact values),
`quoteQty` decimal128(38, 8) (price x qty rounded to 8 decimals, as the archive gives it), `time`
timestamp[us, tz=UTC] (int64 microseconds), `isBuyerMaker` and `isBestMatch` bool. The CSV is what
Binance's archive holds for the day: no header; `time` in microseconds from 2025-01-01 on, milliseconds
before; booleans True/False; isBestMatch, which is not stored, True as on every spot trade.

Streamed from the database: on PostgreSQL one `COPY (SELECT ...) TO STDOUT (FORMAT csv)` per day
(streams.queries.export_copy), whose rows are gathered into blocks of a few MB; each block is compressed
(CSV) or parsed by pyarrow's CSV reader into a record batch and written as a row group (Parquet). Memory
stays a block or two whatever the day's size. Other databases (SQLite) go through the ORM, more slowly.
A file is written under a temporary name and renamed when whole.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from django.db import connection

from streams import queries
from streams.archive import COLUMNS, MICROSECONDS_FROM, day_bounds

logger = logging.getLogger(__name__)

FORMATS: Final = ("parquet", "csv")
SUFFIXES: Final = {"parquet": ".parquet", "csv": ".csv.gz"}
_COLUMNS: Final[list[tuple[str, pa.DataType]]] = [
    ("id", pa.int64()),
    ("price", pa.decimal128(28, 8)),
    ("qty", pa.decimal128(28, 8)),
    ("quoteQty", pa.decimal128(38, 8)),
    ("time", pa.timestamp("us", tz="UTC")),
    ("isBuyerMaker", pa.bool_()),
    ("isBestMatch", pa.bool_()),
]
SCHEMA: Final = pa.schema(_COLUMNS)
_CSV_TYPES: Final = {**{f.name: f.type for f in SCHEMA}, "time": pa.int64()}
_BLOCK_BYTES: Final = 4 << 20
_GZIP_LEVEL: Final = 3  # ~3x smaller than the text at a few times the speed of gzip's default 9
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EIGHT: Final = Decimal("0.00000001")


@dataclass(frozen=True)
class DayExport:
    path: Path | None  # None: nothing stored that day, no file written
    rows: int


def file_name(symbol: str, day: date, fmt: str) -> str:
    return f"{symbol}-trades-{day.isoformat()}{SUFFIXES[fmt]}"


def export_day(symbol: str, channel: str, day: date, fmt: str, out_dir: Path) -> DayExport:
    """Write one day of a stream to `out_dir`; an existing file of that name is replaced."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = out_dir / file_name(symbol, day, fmt)
    partial = path.with_name(path.name + ".part")
    # Parquet always holds microseconds; the CSV holds what the archive would (ms before 2025).
    divisor = 1000 if fmt == "csv" and day < MICROSECONDS_FROM else 1
    blocks = _csv_blocks(symbol, channel, day, divisor)
    try:
        rows = _write_parquet(blocks, partial, symbol, day) if fmt == "parquet" else _write_csv(blocks, partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if rows == 0:
        partial.unlink(missing_ok=True)
        return DayExport(None, 0)
    os.replace(partial, path)
    return DayExport(path, rows)


def _write_csv(blocks: Iterator[bytes], path: Path) -> int:
    rows = 0
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=_GZIP_LEVEL, mtime=0) as out:
        for block in blocks:
            rows += block.count(b"\n")
            out.write(block)
    return rows


def _write_parquet(blocks: Iterator[bytes], path: Path, symbol: str, day: date) -> int:
    rows = 0
    schema = SCHEMA.with_metadata({"symbol": symbol, "day": day.isoformat(), "source": "binance trades"})
    read = pa_csv.ReadOptions(column_names=list(COLUMNS), use_threads=False)
    convert = pa_csv.ConvertOptions(column_types=_CSV_TYPES, true_values=["True"], false_values=["False"])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for block in blocks:
            # pyarrow reads its own NativeFile (here without a copy); the stubs accept only Python's IO.
            source = pa.BufferReader(block)
            table = pa_csv.read_csv(source, read_options=read, convert_options=convert)  # type: ignore[arg-type]
            table = table.set_column(4, "time", table.column("time").cast(pa.timestamp("us", tz="UTC")))
            writer.write_table(table.replace_schema_metadata(schema.metadata))
            rows += table.num_rows
    return rows


def _csv_blocks(symbol: str, channel: str, day: date, divisor: int) -> Iterator[bytes]:
    """The day's rows as archive CSV, in blocks of whole rows."""
    start, end = day_bounds(day)
    if connection.vendor != "postgresql":
        yield from _orm_blocks(symbol, channel, start, end, divisor)
        return
    statement, params = queries.export_copy(symbol, channel, start, end, divisor)
    with connection.cursor() as cursor, cursor.cursor.copy(statement, params) as copy:
        parts: list[bytes] = []
        size = 0
        for row in copy:  # one COPY message per row: a block ends on a whole row
            parts.append(row)
            size += len(row)
            if size >= _BLOCK_BYTES:
                yield b"".join(parts)
                parts, size = [], 0
        if parts:
            yield b"".join(parts)


def _orm_blocks(symbol: str, channel: str, start: datetime, end: datetime, divisor: int) -> Iterator[bytes]:
    lines: list[str] = []
    for trade_id, stored_price, stored_volume, trade_time, maker in queries.day_rows(
            symbol, channel, start, end).iterator(chunk_size=10_000):
        price, volume = Decimal(stored_price).quantize(_EIGHT), Decimal(stored_volume).quantize(_EIGHT)
        quote = (price * volume).quantize(_EIGHT, rounding=ROUND_HALF_UP)
        micros = (trade_time - _EPOCH) // timedelta(microseconds=1)
        lines.append(f"{trade_id},{price:f},{volume:f},{quote:f},{micros // divisor},{maker},True\n")
        if len(lines) >= 50_000:
            yield "".join(lines).encode("ascii")
            lines = []
    if lines:
        yield "".join(lines).encode("ascii")
