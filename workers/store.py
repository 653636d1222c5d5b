"""The one write path for trades on the collection side: store them, and dead-letter what the database refuses.

Every writer goes through `store_or_dead_letter`: the flush of the hand-off buffer, the audit's hole filling,
the archive fill, the archive import and the one-off collector's writer. One poison value never blocks the
others: the storage isolates the trades the database refuses for their content (`streams.storage`), and here
they are kept as dead letters naming the writer (`source`) and counted per writer, so that a refusal looks
the same whichever path met it. Transient and fatal errors propagate untouched: the caller retries or stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final

import redis
from django.db import DEFAULT_DB_ALIAS

from streams.binance.protocol import Trade
from streams.storage import StoreResult, store_trades
from workers.deadletters import REFUSED, DeadLetter, dead_letter, trade_data
from workers.keys import PREFIX
from workers.redis import sync_redis

logger = logging.getLogger(__name__)

Store = Callable[[Sequence[Trade], str], StoreResult]

REFUSED_BY_SOURCE: Final = f"{PREFIX}:refused"  # hash: writer -> trades the database refused, dead-lettered

# The writers, as the dead letters and the counter name them.
FLUSH: Final = "flush"
AUDIT: Final = "audit"
ARCHIVE_FILL: Final = "archive fill"
ARCHIVE_IMPORT: Final = "archive import"
ONE_OFF: Final = "one-off collector"
SOURCES: Final = (FLUSH, AUDIT, ARCHIVE_FILL, ARCHIVE_IMPORT, ONE_OFF)


def store_or_dead_letter(trades: Sequence[Trade], source: str, *, using: str = DEFAULT_DB_ALIAS,
                         r: redis.Redis | None = None, store: Store = store_trades) -> StoreResult:
    """Store `trades` (idempotent: a trade stored already is skipped); the trades the database refused are
    dead-lettered with `source` named and counted under it. Returns what `store` did.

    The dead letters are kept after the commit and before the caller acknowledges anything: a crash in
    between dead-letters a trade twice, never loses one."""
    result = store(trades, using)
    if result.refused:
        client = r if r is not None else sync_redis()
        letters = [DeadLetter(REFUSED, refusal.trade.stream, refusal.reason, trade_data(refusal.trade), source=source)
                   for refusal in result.refused]
        dead_letter(client, letters)
        client.hincrby(REFUSED_BY_SOURCE, source, len(letters))
        logger.error("%s: %d trades refused by the database, dead-lettered (first: %s trade %d: %s)", source,
                     len(letters), letters[0].stream, result.refused[0].trade.trade_id, letters[0].reason)
    return result


def store_for(source: str) -> Store:
    """`store_or_dead_letter` for `source`, with the signature of `streams.storage.store_trades` (for writers
    of the data layer that take a store function, such as the one-off collector's)."""
    def store(trades: Sequence[Trade], using: str) -> StoreResult:
        return store_or_dead_letter(trades, source, using=using)

    return store


def refused_counts(r: redis.Redis) -> dict[str, int]:
    """Trades the database refused, per writer, ever (every known writer, 0 before its first refusal)."""
    raw: dict[bytes, bytes] = r.hgetall(REFUSED_BY_SOURCE)  # type: ignore[assignment]
    return {source: 0 for source in SOURCES} | {key.decode(): int(value) for key, value in raw.items()}
