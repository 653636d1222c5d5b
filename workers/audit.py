"""The periodic audit: holes in the stored trade ids, found and filled over the whole stored range.

Binance trade ids are consecutive per symbol and channel (DESIGN.md promise 2), so a hole between two
stored ids is a trade the pipeline lost (a Redis restart that emptied the buffer, a gap the stream
could not heal); the audit fetches it (historicalTrades / aggTrades with fromId) and stores it.

A verified watermark per stream (`AuditMark`, in the database: it must survive Redis losing everything)
says up to which id everything is known to be stored; each pass looks only above it (at most
`COLLECTOR_AUDIT_SCAN` ids), fills what it finds, and moves the watermark up to just before the first
hole that could not be filled. Nothing is ever left behind a window that moved on (issue 8, 3).

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

from project.logs import stream_context
from streams.binance.protocol import Trade
from streams.binance.rest import BinanceRest
from streams.binance.sequence import Gap
from streams.models import PriceUpdate
from streams.storage import store_trades
from workers.deadletters import REFUSED, DeadLetter, dead_letter, trade_data
from workers.keys import ID_REGRESSIONS, PREFIX, stream_id
from workers.models import AuditMark
from workers.redis import sync_redis

logger = logging.getLogger(__name__)

AUDIT_COUNTS = f"{PREFIX}:audit"  # hash: holes, filled, unfilled, replayed, conflicts, unchecked
_REGRESSIONS_PER_PASS = 1_000

_HOLES = f"""
SELECT prev + 1, trade_id - 1 FROM (
    SELECT trade_id, LAG(trade_id) OVER (ORDER BY trade_id) AS prev
    FROM {PriceUpdate._meta.db_table}
    WHERE ticker_symbol = %s AND channel = %s AND trade_id >= %s AND trade_id <= %s
) AS ordered
WHERE trade_id - prev > 1
ORDER BY 1
"""  # noqa: S608 - the table name is the model's


def holes(symbol: str, channel: str, start: int, end: int) -> list[Gap]:
    """Holes between stored ids within [start, end] (a stored `start` anchors the first one)."""
    with connection.cursor() as cursor:
        cursor.execute(_HOLES, [symbol, channel, start, end])
        return [Gap(first, last) for first, last in cursor.fetchall()]


def fill_holes(symbol: str, channel: str, scan: int | None = None) -> tuple[int, int]:
    """One pass over stream (symbol, channel) above its watermark: (holes found, trades stored)."""
    sid = stream_id(symbol, channel)
    with stream_context(sid):
        return _fill_holes(sid, symbol, channel, scan or settings.COLLECTOR_AUDIT_SCAN)


def _fill_holes(sid: str, symbol: str, channel: str, scan: int) -> tuple[int, int]:
    stored_ids = PriceUpdate.objects.filter(ticker_symbol=symbol, channel=channel)
    mark = AuditMark.objects.filter(stream=sid).values_list("verified_through", flat=True).first()
    start = mark if mark is not None else stored_ids.order_by("trade_id").values_list("trade_id", flat=True).first()
    if start is None:
        return 0, 0  # nothing stored yet
    # The slice ends at a stored id (the first one `scan` ids up, or the newest): a hole that reaches past
    # `start + scan` is anchored on both sides and found whole.
    ids = stored_ids.values_list("trade_id", flat=True)
    end = ids.filter(trade_id__gte=start + scan).order_by("trade_id").first() or ids.order_by("-trade_id").first()
    assert end is not None
    found = holes(symbol, channel, start, end)
    stored = 0
    if found:
        logger.warning("audit found %d holes (%d trades) between ids %d and %d; filling from REST",
                       len(found), sum(g.size for g in found), start, end)
        stored = _fill(symbol, channel, found)
        left = holes(symbol, channel, start, end)
        if left:
            logger.error("%d holes (%d trades) could not be filled yet, first %d..%d; retried next pass",
                         len(left), sum(g.size for g in left), left[0].first, left[0].last)
            end = left[0].first - 1
        _count(holes=len(found), filled=stored, unfilled=sum(g.size for g in left))
    if mark is None or end > mark:
        AuditMark.objects.update_or_create(stream=sid, defaults={"verified_through": end})
    return len(found), stored


def _fill(symbol: str, channel: str, gaps: Sequence[Gap]) -> int:
    async def fetch() -> int:
        stored = 0
        async with BinanceRest(settings.BINANCE_REST_URL) as rest:
            for gap in gaps:
                async for page in rest.pages(symbol, channel, gap):
                    stored += await asyncio.to_thread(_store, page)
        return stored

    return asyncio.run(fetch())


def _store(page: list[Trade]) -> int:
    try:
        result = store_trades(page)
        dead_letter(sync_redis(), [DeadLetter(REFUSED, r.trade.stream, r.reason, trade_data(r.trade))
                                   for r in result.refused])
        return result.inserted
    finally:
        connection.close()  # a thread of asyncio.to_thread's pool: no connection may linger


def check_regressions(limit: int = _REGRESSIONS_PER_PASS) -> dict[str, int]:
    """Compare trades whose id went back with what is stored: a replay (identical) or a conflict."""
    client = sync_redis()
    rows = client.rpop(ID_REGRESSIONS, limit) or []
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
    return {k.decode(): int(v) for k, v in sync_redis().hgetall(AUDIT_COUNTS).items()}


def audit_enabled_streams() -> dict[str, int]:
    from workers.registry import enabled_streams

    total_holes = total_stored = 0
    for symbol, channel in enabled_streams():
        found, stored = fill_holes(symbol, channel)
        total_holes += found
        total_stored += stored
    regressions = check_regressions()
    return {"holes": total_holes, "stored": total_stored, **regressions}
