"""The one vocabulary of a trade, as Arrow columns: the lake's files, the read API and its CSV and NDJSON all
use these names (the seed's, as the database view has them), exact decimals and UTC microseconds.

In a file: `trade_id`, `price`, `volume`, `trade_time`, `event_time`, `is_market_maker`, `received_time`
(live trades only), `first_trade_id`/`last_trade_id` (aggTrade only), rows in `trade_id` order. The partition
columns `market`, `channel`, `ticker_symbol` and `date` are the folders above the file. What the read API
returns adds `market`, `ticker_symbol` and `channel` in front (READ_SCHEMA).

Encodings chosen for trades (measured on the recorded real trades; see docs/dataset.md): ids and times are
nearly sorted integers, which DELTA_BINARY_PACKED keeps to a few bits each; prices repeat within a day and
take a dictionary; zstd over all. Row groups of 128 Ki rows carry min/max statistics, so a reader that
filters on time or id skips the groups outside its range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from streams.binance.protocol import Trade

PRICE: Final = pa.decimal128(28, 8)  # numeric(28,8) in the database: Binance quotes 8 decimals
TIME: Final = pa.timestamp("us", tz="UTC")
_MICROSECONDS: Final = 10**14  # exchange timestamps at or above this are microseconds, below milliseconds

_FILE_FIELDS: Final[list[pa.Field[Any]]] = [
    pa.field("trade_id", pa.int64(), nullable=False),
    pa.field("price", PRICE, nullable=False),
    pa.field("volume", PRICE, nullable=False),
    pa.field("trade_time", TIME, nullable=False),
    pa.field("event_time", TIME, nullable=False),
    pa.field("is_market_maker", pa.bool_(), nullable=False),
    pa.field("received_time", TIME),
    pa.field("first_trade_id", pa.int64()),
    pa.field("last_trade_id", pa.int64()),
]
FILE_SCHEMA: Final = pa.schema(_FILE_FIELDS)
STREAM_FIELDS: Final[list[pa.Field[Any]]] = [pa.field("market", pa.string(), nullable=False),
                        pa.field("ticker_symbol", pa.string(), nullable=False),
                        pa.field("channel", pa.string(), nullable=False)]
READ_SCHEMA: Final = pa.schema([*STREAM_FIELDS, *_FILE_FIELDS])
COLUMNS: Final = tuple(FILE_SCHEMA.names)

ROW_GROUP_ROWS: Final = 128 * 1024
_DELTA: Final = "DELTA_BINARY_PACKED"
WRITER_OPTIONS: Final[dict[str, Any]] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": ["price", "volume", "is_market_maker"],
    "column_encoding": {name: _DELTA for name in ("trade_id", "trade_time", "event_time", "received_time",
                                                   "first_trade_id", "last_trade_id")},
    "write_statistics": True,
    "sorting_columns": [pq.SortingColumn(0)],  # trade_id, ascending
}


def micros(timestamp: int) -> int:
    """An exchange timestamp (milliseconds or microseconds, told by magnitude) in microseconds."""
    return timestamp if timestamp >= _MICROSECONDS else timestamp * 1000


def table_from_trades(trades: Sequence[Trade]) -> pa.Table:
    """Trades as a table of FILE_SCHEMA, in the order given. Decimal text that numeric(28,8) cannot hold
    exactly raises pyarrow.ArrowInvalid (storage refuses such trades before they get here)."""
    columns: list[tuple[Any, ...]] = list(zip(*trades, strict=True)) if trades else [() for _ in Trade._fields]
    (_symbols, _channels, ids, prices, quantities, trade_ts, event_ts, makers, firsts, lasts,
     received) = columns
    return pa.Table.from_arrays([
        pa.array(ids, pa.int64()),
        pa.array(prices, pa.string()).cast(PRICE),
        pa.array(quantities, pa.string()).cast(PRICE),
        pa.array([micros(t) for t in trade_ts], pa.int64()).cast(TIME),
        pa.array([micros(t) for t in event_ts], pa.int64()).cast(TIME),
        pa.array(makers, pa.bool_()),
        pa.array(received, pa.int64()).cast(TIME),
        pa.array(firsts, pa.int64()),
        pa.array(lasts, pa.int64()),
    ], schema=FILE_SCHEMA)


def trades_from_table(table: pa.Table, symbol: str, channel: str) -> list[Trade]:
    """A FILE_SCHEMA table's rows as the protocol's trades (exact decimal text, microsecond times)."""
    def ints(name: str) -> list[Any]:
        return table.column(name).cast(pa.int64()).to_pylist()

    prices = table.column("price").cast(pa.string()).to_pylist()
    volumes = table.column("volume").cast(pa.string()).to_pylist()
    return [Trade(symbol, channel, trade_id, price, volume, traded, event, maker, first, last, received)
            for trade_id, price, volume, traded, event, maker, received, first, last in zip(
                ints("trade_id"), prices, volumes, ints("trade_time"), ints("event_time"),
                table.column("is_market_maker").to_pylist(), ints("received_time"), ints("first_trade_id"),
                ints("last_trade_id"), strict=True)]


def with_stream(table: pa.Table, market: str, symbol: str, channel: str) -> pa.Table:
    """A FILE_SCHEMA table with the stream's columns in front (READ_SCHEMA)."""
    rows = table.num_rows

    def repeated(value: str) -> pa.Array[Any]:  # Arrow fills it: a Python list of a day's rows cost 0.3 s a column
        return pa.repeat(pa.scalar(value, pa.string()), rows)

    return pa.Table.from_arrays([repeated(market), repeated(symbol), repeated(channel),
                                 *table.select(list(COLUMNS)).columns], schema=READ_SCHEMA)


def empty_read_table() -> pa.Table:
    return READ_SCHEMA.empty_table()
