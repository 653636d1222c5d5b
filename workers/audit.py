"""The periodic audit: holes in the stored trade ids, found and filled over the whole stored range.

Binance trade ids are consecutive per symbol and channel, so a hole between two
stored ids is a trade the pipeline lost (a Redis restart that emptied the buffer, a gap the stream
could not heal, rows deleted); the audit fetches it and stores it: from the archive's daily files when the
hole is wide and its days are published (one download instead of thousands of REST calls), and from REST
(historicalTrades / aggTrades with fromId) for the rest.

A verified watermark per stream (`AuditMark`, in the database: it must survive Redis losing everything)
says up to which id everything is known to be stored; each pass looks only above it, in slices of
`COLLECTOR_AUDIT_SCAN` ids. A slice is first counted (one index scan: all there, nothing more to do) and
only searched for holes when the count falls short, so clean slices are passed quickly, several a pass;
the pass ends at the first slice with holes, filled, and the watermark moves up to just before the first
hole that could not be filled. Nothing is ever left behind a window that moved on. Trades
stored below the watermark's range (an archive import of older days) or a hole found below it (the
coverage report) send it back down (`lower_watermark`), so the walk goes through them again.

It also checks the live trades whose id went back (a replayed stream, an exchange reset): a replay is
identical to what is stored; an exchange reset is not, and is logged and counted as a conflict.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import orjson
from django.conf import settings
from django.db import connection

from streams import queries
from streams.binance.logcontext import stream_context
from streams.binance.protocol import TRADE, Trade
from streams.binance.sequence import Gap
from streams.models import PriceUpdate
from workers.archive_import import days_of_gap, import_days
from workers.budget import shared_rest
from workers.keys import ID_REGRESSIONS, PREFIX, stream_id
from workers.redis import sync_redis, text
from workers.store import AUDIT, store_or_dead_letter
from workers.watermark import walk

logger = logging.getLogger(__name__)

AUDIT_COUNTS = f"{PREFIX}:audit"  # hash: holes, filled, unfilled, replayed, conflicts, unchecked
_REGRESSIONS_PER_PASS = 1_000
ARCHIVE_HOLE_MIN = 20_000  # a hole at least this wide, in published days, is filled from the archive first
ARCHIVE_DAYS_PER_PASS = 7  # daily files one pass imports at most (a pass must end before the next is due)

holes = queries.holes  # the audit's question, asked where the table's layout is known


def fill_holes(symbol: str, channel: str, scan: int | None = None) -> tuple[int, int]:
    """One pass over stream (symbol, channel) above its watermark: (holes found, trades stored)."""
    sid = stream_id(symbol, channel)
    with stream_context(sid):
        result = walk(sid, scan or settings.COLLECTOR_AUDIT_SCAN, on_holes=_holes_found)
    return result.holes, result.stored


def _holes_found(symbol: str, channel: str, span: tuple[int, int], found: list[Gap]) -> tuple[int, int]:
    """(how far the slice `span` is verified now, trades stored) once its holes are filled."""
    start, end = span
    logger.warning("audit found %d holes (%d trades) between ids %d and %d; filling them",
                   len(found), sum(g.size for g in found), start, end)
    stored = _fill(symbol, channel, found)
    left = holes(symbol, channel, start, end)
    if left:
        logger.error("%d holes (%d trades) could not be filled yet, first %d..%d; retried next pass",
                     len(left), sum(g.size for g in left), left[0].first, left[0].last)
        end = left[0].first - 1
    _count(holes=len(found), filled=stored, unfilled=sum(g.size for g in left))
    return end, stored


def _fill(symbol: str, channel: str, gaps: Sequence[Gap]) -> int:
    stored = 0
    wide = [g for g in gaps if g.size >= ARCHIVE_HOLE_MIN] if channel == TRADE else []
    if wide:
        stored, whole = _fill_from_archive(symbol, wide)
        left = [h for g in gaps for h in holes(symbol, channel, g.first - 1, g.last + 1)]
        # What the archive could not give (days not published yet, its own holes) comes from REST, unless a
        # wide hole had more days than one pass takes: the next pass goes on with the archive.
        gaps = left if whole else [h for h in left if h.size < ARCHIVE_HOLE_MIN]

    async def fetch() -> int:
        count = 0
        async with shared_rest(micros=True) as rest:
            for gap in gaps:
                async for page in rest.pages(symbol, channel, gap):
                    count += await asyncio.to_thread(_store, page)
        return count

    return stored + asyncio.run(fetch())


def _fill_from_archive(symbol: str, gaps: Sequence[Gap]) -> tuple[int, bool]:
    """Wide holes in days whose daily files are published: those files, verified, imported again (at most
    `ARCHIVE_DAYS_PER_PASS` of them). Returns (trades stored, whether every day of the holes was taken)."""
    days = sorted({day for gap in gaps for day in days_of_gap(symbol, gap)})
    stored = useful = 0
    for index, day in enumerate(days):  # a day that adds nothing (an edge day, stored whole) is not counted
        if useful == ARCHIVE_DAYS_PER_PASS:
            logger.info("%s: %d more days of wide holes from the archive next pass", symbol, len(days) - index)
            return stored, False
        added = import_days(symbol, [day])
        logger.info("%s: %d trades of a wide hole from the archive's file of %s", symbol, added, day)
        stored, useful = stored + added, useful + (added > 0)
    return stored, True


def _store(page: list[Trade]) -> int:
    try:
        return store_or_dead_letter(page, AUDIT).inserted
    finally:
        connection.close()  # a thread of asyncio.to_thread's pool: no connection may linger


def check_regressions(limit: int = _REGRESSIONS_PER_PASS) -> dict[str, int]:
    """Compare trades whose id went back with what is stored: a replay (identical) or a conflict."""
    client = sync_redis()
    rows: list[bytes] = client.rpop(ID_REGRESSIONS, limit) or []  # type: ignore[assignment]  # a list with a count
    counts = {"replayed": 0, "conflicts": 0, "unchecked": 0}
    for raw in rows:
        trade = Trade(*orjson.loads(raw))
        row = PriceUpdate.objects.filter(ticker_symbol=trade.symbol, channel=trade.channel,
                                         trade_id=trade.trade_id).first()
        if row is None:
            counts["unchecked"] += 1  # not stored (yet): the hole audit fetches the exchange's own copy
        elif _same(row, trade):
            counts["replayed"] += 1
        else:
            counts["conflicts"] += 1
            logger.error("%s: trade %d arrived again with other values (an exchange reset?): stored %s %s at %s, "
                         "now %s %s at %s", trade.stream, trade.trade_id, row.price, row.volume, row.trade_time,
                         trade.price_text, trade.quantity_text, trade.trade_time)
    _count(**counts)
    return counts


def _same(row: PriceUpdate, trade: Trade) -> bool:
    return (row.price, row.volume, row.trade_time, row.is_market_maker) == (
        trade.price, trade.quantity, trade.trade_time, trade.is_buyer_maker)


def _count(**counts: int) -> None:
    with sync_redis().pipeline(transaction=False) as pipe:
        for name, value in counts.items():
            if value:
                pipe.hincrby(AUDIT_COUNTS, name, value)
        pipe.execute()


def audit_counts() -> dict[str, int]:
    return {text(k): int(v) for k, v in sync_redis().hgetall(AUDIT_COUNTS).items()}


def audit_enabled_streams() -> dict[str, int]:
    """Fill holes, then bring each stream's day-by-day coverage up to date (workers.coverage)."""
    from workers.coverage import update_coverage
    from workers.registry import enabled_streams

    total_holes = total_stored = 0
    for sid in enabled_streams():
        found, stored = fill_holes(sid.symbol, sid.channel)
        total_holes += found
        total_stored += stored
        update_coverage(sid.symbol, sid.channel)
    regressions = check_regressions()
    return {"holes": total_holes, "stored": total_stored, **regressions}
