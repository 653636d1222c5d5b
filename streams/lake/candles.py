"""Candles (OHLCV bars) from trades, exact: open, high, low, close and volume in the trades' own decimals.

Computed with Arrow's grouped aggregation; open and close are the prices of each bar's first and last trade
(by position, the trades being in id order), as Arrow's first/last aggregations take no decimals.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import pyarrow as pa
import pyarrow.compute as pc

from streams.lake.schema import PRICE, TIME

Unit = Literal["minute", "hour", "day"]
INTERVALS: Final[dict[str, tuple[int, Unit]]] = {
    "1m": (1, "minute"), "5m": (5, "minute"), "15m": (15, "minute"), "1h": (1, "hour"), "1d": (1, "day"),
}
_CANDLE_FIELDS: Final[list[pa.Field[Any]]] = [
    pa.field("open_time", TIME, nullable=False),
    pa.field("open", PRICE, nullable=False),
    pa.field("high", PRICE, nullable=False),
    pa.field("low", PRICE, nullable=False),
    pa.field("close", PRICE, nullable=False),
    pa.field("volume", pa.decimal128(38, 8), nullable=False),
    pa.field("trades", pa.int64(), nullable=False),
]
CANDLE_SCHEMA: Final = pa.schema(_CANDLE_FIELDS)


def candles(trades: pa.Table, interval: str = "1m") -> pa.Table:
    """Bars of `interval` (INTERVALS) over `trades` (with `trade_time`, `price`, `volume`, in id order),
    one row per bar that has trades, in time order."""
    if interval not in INTERVALS:
        raise ValueError(f"unknown interval {interval!r}; expected one of {', '.join(INTERVALS)}")
    if trades.num_rows == 0:
        return CANDLE_SCHEMA.empty_table()
    multiple, unit = INTERVALS[interval]
    times: Any = trades.column("trade_time")  # timestamps (the stubs type a column by its values' scalar)
    bars = pc.floor_temporal(times, multiple=multiple, unit=unit)
    work = pa.table({"bar": bars, "price": trades.column("price"), "volume": trades.column("volume"),
                     "row": pa.array(range(trades.num_rows), pa.int64())})
    grouped = work.group_by("bar", use_threads=False).aggregate([
        ("price", "min"), ("price", "max"), ("volume", "sum"), ("row", "min"), ("row", "max"), ("row", "count")])
    grouped = grouped.sort_by("bar")
    prices = trades.column("price")
    return pa.Table.from_arrays([
        grouped.column("bar").cast(TIME),
        prices.take(grouped.column("row_min")),
        grouped.column("price_max"),
        grouped.column("price_min"),
        prices.take(grouped.column("row_max")),
        grouped.column("volume_sum").cast(pa.decimal128(38, 8)),
        grouped.column("row_count"),
    ], schema=CANDLE_SCHEMA)


def merge(parts: list[pa.Table]) -> pa.Table:
    """Bars of consecutive parts (days) in time order: a bar split between two parts (an interval longer
    than a day cannot be: days are whole bars for every interval here) is never produced."""
    return pa.concat_tables(parts) if parts else CANDLE_SCHEMA.empty_table()
