"""Dead letters: what could not be stored, kept in Redis with the reason, for operators to see.

One list for every kind (bad input is contained, nothing fails silently): frames the parser refused, buffer entries that
cannot be decoded or whose trades fail re-validation (Redis is the trust boundary), and
trades the database refused for their content. A Redis Stream capped at `KEPT` entries (the newest
win: they are evidence, not data waiting to be written, so trimming them loses nothing owed to the
database) and an exact counter of everything ever dead-lettered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis
import redis.asyncio
from redis.typing import EncodableT

from workers.keys import PREFIX

logger = logging.getLogger(__name__)

DEAD_LETTERS: Final = f"{PREFIX}:dead-letters"
DEAD_LETTERS_TOTAL: Final = f"{PREFIX}:dead-letters:total"
KEPT: Final = 10_000

# Kinds
BAD_FRAME: Final = "bad frame"          # the parser refused a frame from the exchange
UNDECODABLE: Final = "undecodable"      # a buffer entry that is not what a stream task writes
INVALID: Final = "invalid trade"        # a buffer trade that fails re-validation
REFUSED: Final = "refused by database"  # a trade the database refused for its content


@dataclass(frozen=True)
class DeadLetter:
    kind: str
    stream: str   # the stream id, or "-" when unknown
    reason: str
    data: str     # the trade as a JSON row, or the raw frame / entry (truncated)
    id: str = ""  # the Redis Stream id: when it was dead-lettered, on the Redis server's clock
    source: str = ""  # the writer that met it (workers.store), or "" for frames and buffer entries

    def fields(self) -> dict[EncodableT, EncodableT]:
        """As kept in the Redis Stream (the source only when there is one)."""
        kept: dict[EncodableT, EncodableT] = {"kind": self.kind, "stream": self.stream, "reason": self.reason[:500],
                                              "data": self.data[:2000]}
        return kept | {"source": self.source} if self.source else kept


def trade_data(trade: Any) -> str:
    return orjson.dumps(tuple(trade)).decode() if isinstance(trade, tuple) else repr(trade)[:2000]


def dead_letter(r: redis.Redis, letters: Iterable[DeadLetter]) -> int:
    """Keep `letters` (from sync code: the flush task); returns how many."""
    letters = list(letters)
    if not letters:
        return 0
    with r.pipeline(transaction=False) as pipe:
        for letter in letters:
            pipe.xadd(DEAD_LETTERS, letter.fields(), maxlen=KEPT, approximate=True)
        pipe.incrby(DEAD_LETTERS_TOTAL, len(letters))
        pipe.execute()
    return len(letters)


async def dead_letter_async(r: redis.asyncio.Redis, letters: Iterable[DeadLetter]) -> int:
    """Keep `letters` (from a stream task's event loop); returns how many."""
    letters = list(letters)
    if not letters:
        return 0
    async with r.pipeline(transaction=False) as pipe:
        for letter in letters:
            pipe.xadd(DEAD_LETTERS, letter.fields(), maxlen=KEPT, approximate=True)
        pipe.incrby(DEAD_LETTERS_TOTAL, len(letters))
        await pipe.execute()
    return len(letters)


def recent_dead_letters(r: redis.Redis, count: int = 50) -> list[DeadLetter]:
    """The newest `count` dead letters, newest first."""
    rows: Any = r.xrevrange(DEAD_LETTERS, count=count)
    letters = []
    for entry_id, data in rows:
        fields = {k.decode(): v.decode(errors="replace") for k, v in data.items()}
        letters.append(DeadLetter(kind=fields.get("kind", ""), stream=fields.get("stream", ""),
                                  reason=fields.get("reason", ""), data=fields.get("data", ""), id=entry_id.decode(),
                                  source=fields.get("source", "")))
    return letters


def dead_letter_total(r: redis.Redis) -> int:
    return int(r.get(DEAD_LETTERS_TOTAL) or 0)
