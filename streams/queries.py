"""Reads of the stored trades for the audit, the completeness report, the archive import and the export.

The one place (with streams.storage, which writes) that knows how trades are laid out: it uses the
`PriceUpdate` model and the public column names of `streams_priceupdate` only (`ticker_symbol`, `channel`,
`trade_id`, `price`, `volume`, `trade_time`, `is_market_maker`), so a new layout behind them (a view over a
partitioned table) needs no change elsewhere. Ids are consecutive per symbol and channel, and increase
with trade time (docs/design.md, "Gaps are healed, not just logged").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import BigIntegerField, Count, F, Max, Min, QuerySet, Window
from django.db.models.expressions import RawSQL
from django.db.models.functions import Lag

from streams.binance.sequence import Gap
from streams.models import PriceUpdate

# One UTC day of trades in the archive's own columns and order (id, price, qty, quoteQty, time,
# isBuyerMaker, isBestMatch) as CSV that PostgreSQL makes itself: numeric prints the stored decimal text.
# `time` is microseconds since the epoch divided by `divisor` (1000: the archive's milliseconds before 2025).
# isBestMatch is not stored: Binance's spot trades all say True.
_EXPORT_COPY = "COPY ({}) TO STDOUT (FORMAT csv)"
_WINDOWS = (timedelta(days=1), timedelta(days=7), timedelta(days=31), timedelta(days=366 * 30))


@dataclass(frozen=True)
class Span:
    """The trades stored in some range: how many, the lowest and highest id (None when there are none)."""

    trades: int
    first_id: int | None
    last_id: int | None

    @property
    def consecutive(self) -> bool:
        return self.first_id is None or self.last_id is None or self.trades == self.last_id - self.first_id + 1


def _stream(symbol: str, channel: str) -> QuerySet[PriceUpdate]:
    return PriceUpdate.objects.filter(ticker_symbol=symbol, channel=channel)


def time_span(symbol: str, channel: str, start: datetime, end: datetime) -> Span:
    """The trades with trade_time in [start, end)."""
    row = _stream(symbol, channel).filter(trade_time__gte=start, trade_time__lt=end).aggregate(
        n=Count("trade_id"), lo=Min("trade_id"), hi=Max("trade_id"))
    return Span(row["n"], row["lo"], row["hi"])


def _id_of(rows: QuerySet[PriceUpdate], pick: Max | Min) -> int | None:
    found: int | None = rows.aggregate(found=pick)["found"]
    return found


def count_ids(symbol: str, channel: str, first: int, last: int) -> int:
    """How many ids of [first, last] are stored."""
    return _stream(symbol, channel).filter(trade_id__gte=first, trade_id__lte=last).count()


def holes(symbol: str, channel: str, start: int, end: int) -> list[Gap]:
    """Holes between stored ids within [start, end] (a stored `start` anchors the first one)."""
    rows = (_stream(symbol, channel).filter(trade_id__gte=start, trade_id__lte=end)
            .annotate(before=Window(Lag("trade_id"), order_by=F("trade_id").asc()))
            .filter(before__lt=F("trade_id") - 1).order_by("trade_id").values_list("before", "trade_id"))
    return [Gap(before + 1, trade_id - 1) for before, trade_id in rows]


def id_before(symbol: str, channel: str, trade_id: int) -> int | None:
    """The highest stored id below `trade_id`."""
    return _id_of(_stream(symbol, channel).filter(trade_id__lt=trade_id), Max("trade_id"))


def id_after(symbol: str, channel: str, trade_id: int) -> int | None:
    """The lowest stored id above `trade_id`."""
    return _id_of(_stream(symbol, channel).filter(trade_id__gt=trade_id), Min("trade_id"))


def first_id(symbol: str, channel: str) -> int | None:
    return _id_of(_stream(symbol, channel), Min("trade_id"))


def last_id(symbol: str, channel: str) -> int | None:
    return _id_of(_stream(symbol, channel), Max("trade_id"))


def last_id_before(symbol: str, channel: str, moment: datetime) -> int | None:
    """The id of the last trade stored with a trade time before `moment`: the day before first, then wider
    windows (each a range of trade time, which the layout finds without reading the rows outside it)."""
    for window in _WINDOWS:
        span = time_span(symbol, channel, moment - window, moment)
        if span.last_id is not None:
            return span.last_id
    return None


def first_id_from(symbol: str, channel: str, moment: datetime) -> int | None:
    """The id of the first trade stored with a trade time at or after `moment` (windows as above)."""
    for window in _WINDOWS:
        span = time_span(symbol, channel, moment, moment + window)
        if span.first_id is not None:
            return span.first_id
    return None


def trade_time_of(symbol: str, channel: str, trade_id: int) -> datetime | None:
    return _stream(symbol, channel).filter(trade_id=trade_id).values_list("trade_time", flat=True).first()


_US = "(extract(epoch FROM {}) * 1000000)::bigint"
# The columns of streams.lake.schema.FILE_SCHEMA, in its order, times as microseconds since the epoch.
DATASET_COLUMNS = ("trade_id", "price", "volume", "trade_us", "event_us", "is_market_maker", "received_us",
                   "first_trade_id", "last_trade_id")


def dataset_rows(symbol: str, channel: str, start: datetime, end: datetime) -> QuerySet[PriceUpdate, tuple[Any, ...]]:
    """The trades of [start, end) in id order, as the lake's columns (DATASET_COLUMNS)."""
    return (_stream(symbol, channel).filter(trade_time__gte=start, trade_time__lt=end).order_by("trade_id")
            .values_list("trade_id", "price", "volume", "trade_time", "event_time", "is_market_maker",
                         "received_time", "first_trade_id", "last_trade_id"))


def dataset_copy(symbol: str, channel: str, start: datetime, end: datetime) -> tuple[str, tuple[Any, ...]]:
    """PostgreSQL: the COPY statement of `dataset_rows`, times made microseconds by the server."""
    rows = (_stream(symbol, channel).filter(trade_time__gte=start, trade_time__lt=end).order_by("trade_id")
            .annotate(trade_us=RawSQL(_US.format("trade_time"), (), output_field=BigIntegerField()),  # noqa: S611 - constant SQL
                      event_us=RawSQL(_US.format("event_time"), (), output_field=BigIntegerField()),  # noqa: S611
                      received_us=RawSQL(_US.format("received_time"), (), output_field=BigIntegerField()))  # noqa: S611
            .values_list(*DATASET_COLUMNS))
    sql, params = rows.query.sql_with_params()
    return _EXPORT_COPY.format(sql), params

