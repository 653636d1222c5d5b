"""The dataset read back in one line: every trade of a stream between two moments, from the lake's sealed days
and the database's hot days, in one schema (streams.lake.schema.READ_SCHEMA), no gap and no duplicate at the
seam.

    from streams.dataset import trades
    table = trades("BTCUSDT", "2026-11-01", "2026-12-01")          # a pyarrow.Table
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)            # exact decimals in pandas

A day is read from one place: the lake when its file is sealed complete (and not damaged), otherwise the
database's rows of the day together with whatever the lake holds of it (a day imported with holes and healed
since), each id once. `[start, end)` is half-open; a moment is a date (its midnight, UTC), an aware datetime,
or ISO 8601 text. Days come one at a time (`day_tables`), so a year of a symbol never needs its size in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from django.db import connection

from streams import queries
from streams.binance.protocol import CHANNELS, TRADE, normalize_symbol
from streams.lake import candles as bars
from streams.lake.files import read_day
from streams.lake.layout import MARKETS, DayKey
from streams.lake.schema import FILE_SCHEMA, READ_SCHEMA, TIME, with_stream
from streams.models import SealedDay
from streams.tiers import lake

EARLIEST: Final = datetime(2017, 1, 1, tzinfo=UTC)  # Binance opened in July 2017: nothing stored is older
_DAY: Final = timedelta(days=1)
_BLOCK_BYTES: Final = 4 << 20
_CSV_TYPES: Final = {"trade_id": pa.int64(), "price": FILE_SCHEMA.field("price").type,
                     "volume": FILE_SCHEMA.field("volume").type, "trade_us": pa.int64(), "event_us": pa.int64(),
                     "is_market_maker": pa.bool_(), "received_us": pa.int64(), "first_trade_id": pa.int64(),
                     "last_trade_id": pa.int64()}

Moment = str | date | datetime


class DatasetError(ValueError):
    """A request the dataset cannot answer as asked (a bad moment, symbol, channel or market)."""


def moment(value: Moment, name: str = "moment") -> datetime:
    """`value` as an aware UTC datetime within what the dataset can hold, or DatasetError naming it."""
    if isinstance(value, datetime):
        result = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        result = datetime(value.year, value.month, value.day, tzinfo=UTC)
    else:
        text = str(value).strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise DatasetError(f"{name} {text!r} is not a date or time (use ISO 8601: 2026-11-01 or "
                               "2026-11-01T12:00:00Z)") from None
        result = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    result = result.astimezone(UTC)
    latest = datetime.now(UTC) + _DAY
    if not EARLIEST <= result <= latest:
        raise DatasetError(f"{name} {result.date().isoformat()} is outside the dataset "
                           f"({EARLIEST.date().isoformat()} to {latest.date().isoformat()})")
    return result


@dataclass(frozen=True)
class Selection:
    """One stream between two moments, checked."""

    market: str
    symbol: str
    channel: str
    start: datetime
    end: datetime

    @classmethod
    def of(cls, symbol: str, start: Moment, end: Moment | None = None, channel: str = TRADE,
           market: str = "spot") -> Selection:
        if market not in MARKETS:
            raise DatasetError(f"unknown market {market!r}; expected one of {', '.join(MARKETS)}")
        if channel not in CHANNELS:
            raise DatasetError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
        try:
            symbol = normalize_symbol(symbol)
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        first = moment(start, "start")
        last = moment(end, "end") if end is not None else datetime.now(UTC)
        if last < first:
            raise DatasetError(f"end {last.isoformat()} is before start {first.isoformat()}")
        return cls(market, symbol, channel, first, last)

    def days(self) -> list[date]:
        day, last = self.start.date(), (self.end - timedelta(microseconds=1)).date()
        found = []
        while day <= last and self.end > self.start:
            found.append(day)
            day += _DAY
        return found

    def key(self, day: date) -> DayKey:
        return DayKey(self.market, self.symbol, self.channel, day)


def trades(symbol: str, start: Moment, end: Moment | None = None, channel: str = TRADE,
           market: str = "spot") -> pa.Table:
    """Every trade of the stream in [start, end) (end: now), in id order, as one pyarrow.Table."""
    parts = list(day_tables(Selection.of(symbol, start, end, channel, market)))
    return pa.concat_tables(parts) if parts else READ_SCHEMA.empty_table()


def candles(symbol: str, start: Moment, end: Moment | None = None, interval: str = "1m", *, channel: str = TRADE,
            market: str = "spot") -> pa.Table:
    """OHLCV bars (streams.lake.candles.CANDLE_SCHEMA) of the stream in [start, end), exact decimals."""
    return candles_through(symbol, start, end, interval, channel=channel, market=market)[0]


def candles_through(symbol: str, start: Moment, end: Moment | None = None, interval: str = "1m", *,
                    channel: str = TRADE, market: str = "spot") -> tuple[pa.Table, int | None]:
    """`candles`, and the id of the newest trade they hold (None: no trade): whoever adds live trades to the
    bars afterwards (the live page) skips the ids the bars already count."""
    selection = Selection.of(symbol, start, end, channel, market)
    if interval not in bars.INTERVALS:
        raise DatasetError(f"unknown interval {interval!r}; expected one of {', '.join(bars.INTERVALS)}")
    columns = ("trade_id", "price", "volume", "trade_time")
    parts, through = [], None
    for day in day_tables(selection, columns, with_columns=False):
        parts.append(bars.candles(day, interval))
        through = day.column("trade_id")[-1].as_py()  # days come in id order, each in id order
    return bars.merge(parts), through


def day_tables(selection: Selection, columns: Sequence[str] | None = None, *,
               with_columns: bool = True) -> Iterator[pa.Table]:
    """The selection's trades, one table per UTC day that has any (READ_SCHEMA; FILE_SCHEMA's `columns`
    only, without the stream's columns, when `with_columns` is False)."""
    sealed = {row.day: row for row in SealedDay.objects.filter(
        market=selection.market, symbol=selection.symbol, channel=selection.channel,
        day__gte=selection.start.date(), day__lte=selection.end.date())}
    for day in selection.days():
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        start, end = max(selection.start, midnight), min(selection.end, midnight + _DAY)
        table = day_table(selection.key(day), sealed.get(day), columns, start, end)
        if table.num_rows:
            yield with_stream(table, selection.market, selection.symbol, selection.channel) if with_columns \
                else table


def day_table(key: DayKey, sealed: SealedDay | None, columns: Sequence[str] | None = None,
              start: datetime | None = None, end: datetime | None = None) -> pa.Table:
    """One day of one stream (FILE_SCHEMA, or `columns` of it), from the tier that holds it; only the trades
    of [start, end) when given (inside the day). The database is asked for that part only; a lake file is
    read whole and filtered."""
    wanted = list(columns) if columns else list(FILE_SCHEMA.names)
    midnight = datetime(key.day.year, key.day.month, key.day.day, tzinfo=UTC)
    start, end = start or midnight, end or midnight + _DAY
    whole = start <= midnight and end >= midnight + _DAY
    if sealed is not None and sealed.complete and sealed.state == SealedDay.State.SEALED:
        read = wanted if whole or "trade_time" in wanted else [*wanted, "trade_time"]
        return _clip(read_day(lake(), key, read), start, end, whole).select(wanted)
    stored = database_day(key, start, end)
    if sealed is None:
        return stored.select(wanted)
    return _clip(union(stored, read_day(lake(), key)), start, end, whole).select(wanted)


def database_day(key: DayKey, start: datetime | None = None, end: datetime | None = None) -> pa.Table:
    """The database's rows of the day (FILE_SCHEMA), or of [start, end) inside it. The database holds spot
    only until it has markets."""
    if key.market != "spot":
        return FILE_SCHEMA.empty_table()
    midnight = datetime(key.day.year, key.day.month, key.day.day, tzinfo=UTC)
    start, end = max(start or midnight, midnight), min(end or midnight + _DAY, midnight + _DAY)
    if connection.vendor == "postgresql":
        return _copy_day(key, start, end)
    rows = queries.dataset_rows(key.symbol, key.channel, start, end)
    return _rows_table(list(rows.iterator(chunk_size=20_000)))


def union(preferred: pa.Table, other: pa.Table) -> pa.Table:
    """Both tables' rows in id order, each id once: where both hold an id, `preferred`'s row."""
    if other.num_rows == 0:
        return preferred
    if preferred.num_rows == 0:
        return other
    both = pa.concat_tables([preferred.cast(FILE_SCHEMA), other.cast(FILE_SCHEMA)])
    rank = pa.array([0] * preferred.num_rows + [1] * other.num_rows, pa.int8())
    order = pc.sort_indices(pa.table({"id": both.column("trade_id"), "rank": rank}),
                            sort_keys=[("id", "ascending"), ("rank", "ascending")])
    both = both.take(order)
    ids = both.column("trade_id").combine_chunks()
    keep = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    mask: Any = pa.concat_arrays([pa.array([True]), keep.fill_null(True)])
    return both.filter(mask)


_CONTENT = ("price", "volume", "trade_time", "is_market_maker")


def differing_ids(new: pa.Table, old: pa.Table) -> pa.Array[Any]:
    """The ids both tables hold with another price, volume, trade time or side: what a source that corrects
    another (a re-published archive file) changes."""
    if new.num_rows == 0 or old.num_rows == 0:
        return pa.array([], pa.int64())
    joined = new.select(["trade_id", *_CONTENT]).join(old.select(["trade_id", *_CONTENT]), keys="trade_id",
                                                     join_type="inner", right_suffix="_old", use_threads=False)
    differ = pa.array([False] * joined.num_rows, pa.bool_())
    for name in _CONTENT:
        differ = pc.or_(differ, pc.not_equal(joined.column(name), joined.column(f"{name}_old")))
    return joined.filter(differ).column("trade_id").combine_chunks()


def without(table: pa.Table, ids: pa.Array[Any]) -> pa.Table:
    """`table` less the rows of `ids`."""
    return table if len(ids) == 0 else table.filter(pc.invert(pc.is_in(table.column("trade_id"), value_set=ids)))


def _clip(table: pa.Table, start: datetime, end: datetime, whole: bool) -> pa.Table:
    """Rows of a day table inside [start, end) (only the first and last day of a range need it)."""
    if whole or table.num_rows == 0:
        return table
    times = table.column("trade_time")
    inside = pc.and_(pc.greater_equal(times, pa.scalar(start, TIME)), pc.less(times, pa.scalar(end, TIME)))
    return table.filter(inside)


def _copy_day(key: DayKey, start: datetime, end: datetime) -> pa.Table:
    statement, params = queries.dataset_copy(key.symbol, key.channel, start, end)
    tables = []
    with connection.cursor() as cursor, cursor.cursor.copy(statement, params) as copy:
        parts: list[bytes] = []
        size = 0
        for row in copy:  # one COPY message per row: a block ends on a whole row
            parts.append(row)
            size += len(row)
            if size >= _BLOCK_BYTES:
                tables.append(_csv_table(b"".join(parts)))
                parts, size = [], 0
        if parts:
            tables.append(_csv_table(b"".join(parts)))
    return pa.concat_tables(tables) if tables else FILE_SCHEMA.empty_table()


def _csv_table(block: bytes) -> pa.Table:
    read = pa_csv.ReadOptions(column_names=list(queries.DATASET_COLUMNS), use_threads=False)
    convert = pa_csv.ConvertOptions(column_types=_CSV_TYPES, true_values=["t"], false_values=["f"],
                                    strings_can_be_null=False)
    # pyarrow reads its own NativeFile (here without a copy); the stubs accept only Python's IO.
    raw = pa_csv.read_csv(pa.BufferReader(block), read_options=read, convert_options=convert)  # type: ignore[arg-type]
    return pa.Table.from_arrays([
        raw.column("trade_id"), raw.column("price"), raw.column("volume"),
        raw.column("trade_us").cast(TIME), raw.column("event_us").cast(TIME), raw.column("is_market_maker"),
        raw.column("received_us").cast(TIME), raw.column("first_trade_id"), raw.column("last_trade_id"),
    ], schema=FILE_SCHEMA)


def _rows_table(rows: list[tuple[object, ...]]) -> pa.Table:
    if not rows:
        return FILE_SCHEMA.empty_table()
    ids, prices, volumes, traded, events, makers, received, firsts, lasts = zip(*rows, strict=True)

    def us(values: Sequence[object]) -> pa.Array[Any]:
        return pa.array([None if v is None else _epoch_us(v) for v in values], pa.int64()).cast(TIME)

    return pa.Table.from_arrays([
        pa.array(ids, pa.int64()), pa.array(prices).cast(FILE_SCHEMA.field("price").type),
        pa.array(volumes).cast(FILE_SCHEMA.field("volume").type), us(traded), us(events),
        pa.array(makers, pa.bool_()), us(received), pa.array(firsts, pa.int64()), pa.array(lasts, pa.int64()),
    ], schema=FILE_SCHEMA)


def _epoch_us(moment_value: object) -> int:
    assert isinstance(moment_value, datetime)
    return (moment_value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
