"""The periodic audit: find holes in the stored trade ids of each enabled stream and fill them from REST.

Binance trade ids are consecutive per symbol and channel (DESIGN.md promise 2), so a hole between two
stored ids is a trade the pipeline lost; the audit fetches it (historicalTrades / aggTrades with fromId)
and stores it like any other trade.
"""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings
from django.db import connection

from streams.binance.rest import BinanceRest
from streams.binance.sequence import Gap
from streams.models import PriceUpdate
from streams.storage import store_trades

logger = logging.getLogger(__name__)

_HOLES = f"""
SELECT prev + 1, trade_id - 1 FROM (
    SELECT trade_id, LAG(trade_id) OVER (ORDER BY trade_id) AS prev
    FROM {PriceUpdate._meta.db_table}
    WHERE ticker_symbol = %s AND channel = %s AND trade_id >= %s
) AS ordered
WHERE trade_id - prev > 1
ORDER BY 1
"""  # noqa: S608 - the table name is the model's


def holes(symbol: str, channel: str, window: int) -> list[Gap]:
    """Holes among the stored ids of the newest `window` ids of the stream."""
    newest = (PriceUpdate.objects.filter(ticker_symbol=symbol, channel=channel)
              .order_by("-trade_id").values_list("trade_id", flat=True).first())
    if newest is None:
        return []
    with connection.cursor() as cursor:
        cursor.execute(_HOLES, [symbol, channel, newest - window])
        return [Gap(first, last) for first, last in cursor.fetchall()]


async def _fetch(symbol: str, channel: str, gaps: list[Gap]) -> list[list]:  # type: ignore[type-arg]
    pages = []
    async with BinanceRest(settings.BINANCE_REST_URL) as rest:
        for gap in gaps:
            async for page in rest.pages(symbol, channel, gap):
                pages.append(page)
    return pages


def fill_holes(symbol: str, channel: str, window: int | None = None) -> tuple[int, int]:
    """(holes found, trades stored) for one stream."""
    found = holes(symbol, channel, window or settings.COLLECTOR_AUDIT_WINDOW)
    if not found:
        return 0, 0
    logger.warning("%s@%s: audit found %d holes (%d trades); filling from REST", symbol.lower(), channel,
                   len(found), sum(g.size for g in found))
    stored = 0
    for page in asyncio.run(_fetch(symbol, channel, found)):
        stored += store_trades(page).inserted
    return len(found), stored


def audit_enabled_streams() -> dict[str, int]:
    from workers.registry import enabled_streams

    total_holes = total_stored = 0
    for symbol, channel in enabled_streams():
        found, stored = fill_holes(symbol, channel)
        total_holes += found
        total_stored += stored
    return {"holes": total_holes, "stored": total_stored}
