"""What the two tiers hold together, for the completeness report: a day's trades, first and last id and holes,
and the ids stored around a day, whether they are in the database, in the lake, or in both.

A day lives in the database (hot, or healed and not sealed again yet), in the lake (sealed; its manifest,
streams.models.SealedDay, says how many rows and which ids without opening the file), or in both (the hot
window, or a lake day being healed). Facts of a day in both tiers come from the union of their ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from django.conf import settings
from django.db.models import Max, Min, QuerySet

from streams import queries
from streams.binance.sequence import Gap
from streams.lake.files import read_day
from streams.lake.layout import DayKey, Lake
from streams.models import SealedDay


@dataclass(frozen=True)
class DaySpan:
    trades: int
    first_id: int | None
    last_id: int | None
    holes: list[Gap] = field(default_factory=list)  # inside [first_id, last_id]
    in_database: bool = False
    in_lake: bool = False


def lake() -> Lake:
    """The lake at LAKE_URL (a relative folder is taken from the checkout); read each time, so that a setting
    changed in a test or a shell applies."""
    return Lake.at(settings.LAKE_URL, base=settings.BASE_DIR)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def sealed_day(key: DayKey) -> SealedDay | None:
    return SealedDay.objects.filter(market=key.market, symbol=key.symbol, channel=key.channel, day=key.day).first()


def day_span(key: DayKey, sealed: SealedDay | None = None) -> DaySpan:
    """The day's trades across both tiers."""
    sealed = sealed if sealed is not None else sealed_day(key)
    start, end = day_bounds(key.day)
    stored = queries.time_span(key.symbol, key.channel, start, end) if key.market == "spot" else queries.Span(
        0, None, None)
    if sealed is None:
        holes = [] if stored.consecutive or stored.first_id is None or stored.last_id is None else queries.holes(
            key.symbol, key.channel, stored.first_id, stored.last_id)
        return DaySpan(stored.trades, stored.first_id, stored.last_id, holes, in_database=stored.trades > 0)
    if stored.trades == 0 and sealed.complete:
        return DaySpan(sealed.rows, sealed.first_id, sealed.last_id, [], in_lake=True)
    ids = read_day(lake(), key, ["trade_id"]).column("trade_id").combine_chunks()
    if stored.trades:
        database_ids = pa.array(list(queries.dataset_rows(key.symbol, key.channel, start, end).values_list(
            "trade_id", flat=True)), pa.int64())
        merged = pc.unique(pa.concat_arrays([ids, database_ids]))
        ids = merged.take(pc.sort_indices(merged))
    return span_of_ids(ids, in_database=stored.trades > 0)


def span_of_ids(ids: pa.Array[Any], *, in_database: bool = False) -> DaySpan:
    """The span of sorted, distinct ids of a day that the lake holds (alone or with the database)."""
    if len(ids) == 0:
        return DaySpan(0, None, None, [], in_database=in_database, in_lake=True)
    values = [v for v in ids.to_pylist() if v is not None]  # ids are never null
    steps = pc.subtract(ids.slice(1), ids.slice(0, len(ids) - 1))
    gaps = pc.indices_nonzero(pc.greater(steps, pa.scalar(1, pa.int64()))).to_pylist()
    after = [i for i in gaps if i is not None]
    holes = [Gap(values[i] + 1, values[i + 1] - 1) for i in after]
    return DaySpan(len(values), values[0], values[-1], holes, in_database=in_database, in_lake=True)


def id_before(key: DayKey, trade_id: int) -> int | None:
    """The highest id below `trade_id` stored in either tier."""
    stored = queries.id_before(key.symbol, key.channel, trade_id) if key.market == "spot" else None
    sealed = _sealed(key).filter(last_id__lt=trade_id).aggregate(top=Max("last_id"))["top"]
    return max((v for v in (stored, sealed) if v is not None), default=None)


def id_after(key: DayKey, trade_id: int) -> int | None:
    """The lowest id above `trade_id` stored in either tier."""
    stored = queries.id_after(key.symbol, key.channel, trade_id) if key.market == "spot" else None
    sealed = _sealed(key).filter(first_id__gt=trade_id).aggregate(low=Min("first_id"))["low"]
    return min((v for v in (stored, sealed) if v is not None), default=None)


def last_id_before_day(key: DayKey) -> int | None:
    """The id of the last trade stored before the day starts, in either tier."""
    start, _ = day_bounds(key.day)
    stored = queries.last_id_before(key.symbol, key.channel, start) if key.market == "spot" else None
    sealed = _sealed(key).filter(day__lt=key.day).aggregate(top=Max("last_id"))["top"]
    return max((v for v in (stored, sealed) if v is not None), default=None)


def first_id_after_day(key: DayKey) -> int | None:
    """The id of the first trade stored after the day ends, in either tier."""
    _, end = day_bounds(key.day)
    stored = queries.first_id_from(key.symbol, key.channel, end) if key.market == "spot" else None
    sealed = _sealed(key).filter(day__gt=key.day).aggregate(low=Min("first_id"))["low"]
    return min((v for v in (stored, sealed) if v is not None), default=None)


def _sealed(key: DayKey) -> QuerySet[SealedDay]:
    return SealedDay.objects.filter(market=key.market, symbol=key.symbol, channel=key.channel)
