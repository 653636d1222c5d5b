"""Days the archive has not published yet, filled from REST (historicalTrades by fromId).

A run of missing days [t0, t1) is bounded by what is stored around it: the last trade stored before t0 and
the first one stored from t1 on (the next imported day, or the live stream's trades). Between the two the
ids are walked forward; when nothing is stored after, up to the exchange's newest trade for a run that
reaches today (the live stream goes on from there), or to t1 for a run in the past. When nothing is stored
before t0 (the first day asked is the one missing), the walk goes backwards from the upper bound until
the trades are older than t0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from django.db import connection

from streams import tiers
from streams.archive import day_bounds
from streams.binance.protocol import TRADE, Trade
from streams.binance.rest import PAGE_LIMIT, BinanceRest
from streams.binance.sequence import Gap
from streams.lake.layout import DayKey
from workers.budget import shared_rest
from workers.store import ARCHIVE_FILL, store_or_dead_letter

logger = logging.getLogger(__name__)


class Report(Protocol):
    days: set[tuple[str, str, date]]


def fill_missing_days(symbol: str, days: Iterable[date], report: Report) -> int:
    """Fill each run of consecutive missing `days` from REST; returns the trades added."""
    total = 0
    for first, last in _runs(sorted(set(days))):
        start, end = day_bounds(first)[0], day_bounds(last)[1]
        # What is stored around the run, in either tier (the days before may be in the lake alone).
        lower = tiers.last_id_before_day(DayKey("spot", symbol, TRADE, first))
        upper = tiers.first_id_after_day(DayKey("spot", symbol, TRADE, last))
        stop_at = end if upper is None and end <= datetime.now(UTC) else None
        added = asyncio.run(_fill_run(symbol, start, lower, upper, stop_at))
        logger.info("%s: %s..%s not in the archive yet: %d trades from REST", symbol, first, last, added)
        report.days.update((symbol, TRADE, first + timedelta(days=n)) for n in range((last - first).days + 1))
        total += added
    return total


def _runs(days: list[date]) -> Iterator[tuple[date, date]]:
    """(first, last) of each run of consecutive days."""
    index = 0
    while index < len(days):
        last = index
        while last + 1 < len(days) and days[last + 1] - days[last] == timedelta(days=1):
            last += 1
        yield days[index], days[last]
        index = last + 1


async def _fill_run(symbol: str, start: datetime, lower: int | None, upper: int | None,
                    stop_at: datetime | None) -> int:
    async with shared_rest(micros=True) as rest:
        end = upper - 1 if upper is not None else await rest.latest_trade_id(symbol, TRADE)
        if end is None:
            return 0
        if lower is not None:
            return await _forward(rest, symbol, Gap(lower + 1, end), stop_at)
        return await _backward(rest, symbol, end, start)


async def _forward(rest: BinanceRest, symbol: str, gap: Gap, stop_at: datetime | None) -> int:
    stored = 0
    async for page in rest.pages(symbol, TRADE, gap):
        keep = page if stop_at is None else [t for t in page if t.trade_time < stop_at]
        stored += await asyncio.to_thread(_store, keep)
        if len(keep) < len(page):
            break
    return stored


async def _backward(rest: BinanceRest, symbol: str, end: int, start: datetime) -> int:
    stored = 0
    while end >= 0:
        from_id = max(0, end - PAGE_LIMIT + 1)
        page = [t for t in await rest.trades_page(symbol, TRADE, from_id, end - from_id + 1)
                if from_id <= t.trade_id <= end]
        keep = [t for t in page if t.trade_time >= start]
        stored += await asyncio.to_thread(_store, keep)
        if not page or len(keep) < len(page) or from_id == 0:
            return stored
        end = from_id - 1
    return stored


def _store(trades: list[Trade]) -> int:
    try:
        return store_or_dead_letter(trades, ARCHIVE_FILL).inserted
    finally:
        connection.close()  # a thread of asyncio.to_thread's pool: no connection may linger
