"""The read API's trades as bytes, a day at a time: Parquet, CSV and NDJSON in the one vocabulary
(streams.lake.schema.READ_SCHEMA), and the Binance archive's own CSV layout for exports.

Every encoder takes the day tables that `streams.dataset.day_tables` yields and gives back chunks of bytes of
about a row group each, so that a year of a symbol is written without its size in memory:
- Parquet: one ParquetWriter over the whole range, each day part in row groups of its own (min/max statistics
  per group let a reader skip by time and id), written into a sink that is drained after every group: the
  format is written front to back, so the bytes can go out before the footer is written.
- CSV: a header of READ_SCHEMA's names, then one line per trade: decimals as exact plain text
  (`0.00000001`, never `1E-8`), times in ISO 8601 UTC with microseconds, booleans `true`/`false`, an empty
  field for a missing value.
- NDJSON: one JSON object per line with the same texts: decimals as strings (a JSON number would lose them to
  binary floating point in most readers), ids as numbers, `null` for a missing value.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from datetime import date
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Any, Final, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streams.archive import MICROSECONDS_FROM
from streams.lake.schema import READ_SCHEMA, ROW_GROUP_ROWS, WRITER_OPTIONS

if TYPE_CHECKING:
    Text = pa.StringArray  # a column of text
    Piece = Text | str  # a column of text, or a text that every row has

FORMATS: Final = ("parquet", "csv", "ndjson")
MEDIA_TYPES: Final = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv; charset=utf-8",
                      "ndjson": "application/x-ndjson"}
SUFFIXES: Final = {"parquet": ".parquet", "csv": ".csv", "ndjson": ".ndjson"}
TEXT_ROWS: Final = 65_536  # rows per CSV or NDJSON chunk (a few MB of text)
_STREAM_COLUMNS: Final = ("market", "ticker_symbol", "channel")
_PARQUET_OPTIONS: Final = {**WRITER_OPTIONS,
                           "use_dictionary": [*WRITER_OPTIONS["use_dictionary"], *_STREAM_COLUMNS]}


class _Drain(io.RawIOBase):
    """A write-only file whose bytes are taken out as they come (the Parquet writer's sink)."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def encode(tables: Iterable[pa.Table], fmt: str) -> Iterator[bytes]:
    """The tables (READ_SCHEMA, in order) as `fmt`, in chunks; an empty range is a valid empty file."""
    if fmt == "parquet":
        return parquet_chunks(tables)
    if fmt == "csv":
        return csv_chunks(tables)
    if fmt == "ndjson":
        return ndjson_chunks(tables)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def parquet_chunks(tables: Iterable[pa.Table]) -> Iterator[bytes]:
    sink = _Drain()
    with pq.ParquetWriter(cast("IO[bytes]", sink), READ_SCHEMA, **_PARQUET_OPTIONS) as writer:
        for table in tables:
            for offset in range(0, table.num_rows, ROW_GROUP_ROWS):
                writer.write_table(table.slice(offset, ROW_GROUP_ROWS).cast(READ_SCHEMA))
                yield sink.take()
    yield sink.take()  # the footer


def csv_chunks(tables: Iterable[pa.Table]) -> Iterator[bytes]:
    yield (",".join(READ_SCHEMA.names) + "\n").encode()
    for table in tables:
        for offset in range(0, table.num_rows, TEXT_ROWS):
            texts = _texts(table.slice(offset, TEXT_ROWS))
            pieces: list[Piece] = []
            for field in READ_SCHEMA:
                text = texts[field.name]
                pieces += [_csv_field(text) if isinstance(text, str) else _filled(text, ""), ","]
            yield _joined([*pieces[:-1], "\n"])


def ndjson_chunks(tables: Iterable[pa.Table]) -> Iterator[bytes]:
    for table in tables:
        for offset in range(0, table.num_rows, TEXT_ROWS):
            texts = _texts(table.slice(offset, TEXT_ROWS))
            pieces: list[Piece] = []
            for number, field in enumerate(READ_SCHEMA):
                text = texts[field.name]
                pieces.append(("{" if number == 0 else ",") + json.dumps(field.name) + ":")
                if isinstance(text, str):
                    pieces.append(json.dumps(text))
                elif pa.types.is_integer(field.type) or pa.types.is_boolean(field.type):
                    pieces.append(_filled(text, "null"))
                else:  # decimals and times: digits, signs, dots, dashes and colons, nothing to escape
                    pieces.append(_filled(_join(['"', text, '"']), "null"))
            yield _joined([*pieces, "}\n"])


def _texts(table: pa.Table) -> dict[str, Piece]:
    """Each READ_SCHEMA column of `table` as text (nulls stay null); the stream's columns, which hold one
    value per table, as that value."""
    out: dict[str, Piece] = {}
    for field in READ_SCHEMA:
        column = table.column(field.name).combine_chunks()
        if field.name in _STREAM_COLUMNS:
            values = pc.unique(column).to_pylist()
            if len(values) != 1:
                raise ValueError(f"a table of more than one stream: {field.name} {values!r}")
            out[field.name] = str(values[0])
        elif pa.types.is_decimal(field.type):
            out[field.name] = decimal_text(column)
        elif pa.types.is_timestamp(field.type):
            out[field.name] = iso_text(column)
        else:
            out[field.name] = cast("Text", column.cast(pa.string()))
    return out


def iso_text(column: pa.Array[Any]) -> Text:
    """UTC times as ISO 8601 text with microseconds (`2026-11-01T12:00:00.123456Z`), nulls kept. Arrow's
    cast writes `2026-11-01 12:00:00.123456`, 26 characters for every year the dataset holds: the space and
    the zone are put right in place, a few times faster than strftime or a text replace."""
    naive = cast("pa.TimestampArray", column.cast(pa.timestamp("us")))
    text = cast("Text", pc.fill_null(naive, pa.scalar(0, pa.timestamp("us"))).cast(pa.string()))
    rows, width, data = len(text), 26, text.buffers()[2]
    lengths = pc.utf8_length(text)
    if data is None or text.offset or rows == 0 or pc.min(lengths).as_py() != width or \
            pc.max(lengths).as_py() != width:  # never for the dataset's years
        result = _join([pc.replace_substring(text, " ", "T", max_replacements=1), "Z"])
    else:
        out = np.empty((rows, width + 1), np.uint8)
        out[:, :width] = np.frombuffer(memoryview(data), np.uint8, count=rows * width).reshape(rows, width)
        out[:, 10], out[:, width] = ord("T"), ord("Z")
        offsets = np.arange(0, (rows + 1) * (width + 1), width + 1, dtype=np.int32)
        buffers = [None, pa.py_buffer(offsets.data), pa.py_buffer(out.data)]
        result = cast("Text", pa.Array.from_buffers(pa.string(), rows, buffers))
    if not column.null_count:
        return result
    return cast("Text", pc.if_else(pc.is_valid(column), result, pa.scalar(None, pa.string())))


def _csv_field(value: str) -> str:
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def decimal_text(column: pa.Array[Any]) -> Text:
    """Decimals as plain text with their scale (`0.00000001`): Arrow writes values under 1e-6 in exponent form
    (`1E-8`), which those few values are rewritten from."""
    text = cast("Text", column.cast(pa.string()))
    if not pc.any(pc.match_substring(text, "E")).as_py():
        return text
    fixed = [None if v is None else (f"{Decimal(v):f}" if "E" in v else v) for v in text.to_pylist()]
    return pa.array(fixed, pa.string())


def _filled(text: Text, value: str) -> Text:
    return cast("Text", pc.fill_null(text, pa.scalar(value, pa.string())))


def _join(pieces: list[Piece]) -> Text:
    """The pieces joined row by row (a null in any: null)."""
    return cast("Text", pc.binary_join_element_wise(*pieces, ""))  # type: ignore[call-overload]


def _joined(pieces: list[Piece]) -> bytes:
    """The pieces (columns of text without nulls, and constants) joined row by row, as one block of bytes."""
    joined = _join(pieces)
    if len(joined) == 0:
        return b""
    _validity, offsets, data = joined.buffers()
    assert offsets is not None and data is not None  # a string array of rows has both
    bounds = np.frombuffer(memoryview(offsets), dtype=np.int32)[[joined.offset, joined.offset + len(joined)]]
    return bytes(data.slice(int(bounds[0]), int(bounds[1] - bounds[0])).to_pybytes())


# --- the Binance archive's own CSV layout (exports) -----------------------------------------------------


def archive_csv_chunks(table: pa.Table, day: date, channel: str) -> Iterator[bytes]:
    """`archive_csv` of the table, TEXT_ROWS rows at a time."""
    for offset in range(0, table.num_rows, TEXT_ROWS):
        yield archive_csv(table.slice(offset, TEXT_ROWS), day, channel)


def archive_csv(table: pa.Table, day: date, channel: str) -> bytes:
    """A day's trades (FILE_SCHEMA columns) as the spot archive's CSV file of the day holds them: no header;
    `trades`: `id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch`, `aggTrades`: `aggId,price,qty,
    firstId,lastId,time,isBuyerMaker,isBestMatch`; times in milliseconds before 2025-01-01, microseconds from
    it on; booleans `True`/`False`; quoteQty = price x qty rounded half up to 8 decimals; isBestMatch, which
    is not stored, True as on every spot trade."""
    if table.num_rows == 0:
        return b""

    def text(name: str) -> Text:
        return cast("Text", table.column(name).combine_chunks().cast(pa.string()))

    micros = table.column("trade_time").combine_chunks().cast(pa.int64())
    time = cast("Text", (pc.divide(micros, 1000) if day < MICROSECONDS_FROM else micros).cast(pa.string()))
    price, volume = (decimal_text(table.column(n).combine_chunks()) for n in ("price", "volume"))
    maker = cast("Text", pc.if_else(table.column("is_market_maker").combine_chunks(), "True", "False"))
    if channel == "aggTrade":
        columns: list[Piece] = [text("trade_id"), price, volume, text("first_trade_id"), text("last_trade_id"), time,
                                maker, "True"]
    else:
        wide = pa.decimal256(28, 8)  # price x qty needs 57 digits before rounding: more than decimal128 holds
        product = pc.multiply(table.column("price").combine_chunks().cast(wide),
                              table.column("volume").combine_chunks().cast(wide))
        quote = pc.round(product, ndigits=8, round_mode="half_up").cast(pa.decimal128(38, 8))
        columns = [text("trade_id"), price, volume, decimal_text(quote), time, maker, "True"]
    pieces: list[Piece] = []
    for column in columns:
        pieces += [column, ","]
    return _joined([*pieces[:-1], "\n"])
