"""The hand-off buffer: a Redis Stream of trade batches between the stream tasks and the flush task.

Stream tasks (asyncio) append batches of parsed trades; the flush task (sync, Celery beat) reads them
through the consumer group `BUFFER_GROUP`, writes them with one `store_or_dead_letter` call (workers.store),
and only after that commit acknowledges and deletes them (docs/design.md, "The promises"). Delivery is
at-least-once; the
storage's unique key makes a second write of the same trade harmless.

Depth is bounded by a counter of waiting trades (`BUFFER_TRADES`), never by XADD MAXLEN/MINID trimming,
which would drop entries no flusher has written yet (XADD's MAXLEN trims unread entries). The counter moves only
inside Lua scripts, together with the entries it counts: +n with the XADDs, -n with the XDELs that
actually removed an entry, so a double acknowledgement cannot count twice; when the stream is empty it is
reset to 0, which heals any drift.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

import orjson
import redis
import redis.asyncio
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS

from streams.binance.errors import ParseError
from streams.binance.protocol import Trade, validate_trade
from streams.storage import StoreResult, store_trades
from workers.deadletters import INVALID, UNDECODABLE, DeadLetter, dead_letter, trade_data
from workers.keys import BUFFER_GROUP, BUFFER_STREAM, FLUSH_LOCK
from workers.store import FLUSH, Store, store_or_dead_letter

logger = logging.getLogger(__name__)

BUFFER_TRADES: Final = f"{BUFFER_STREAM}:trades"  # counter of trades appended and not yet written
DEFAULT_CHUNK: Final = 1000                        # trades per entry

# Lock and reclaim timing. A flush of 5000 trades takes ~0.1-0.5 s; the lock lives FLUSH_LOCK_TTL (about
# 5x a slow flush), so a flusher that dies holding it stalls flushing for at most that long. Reclaiming
# takes entries idle for `reclaim_idle` (60 s by default), and the lock TTL is kept below half of it
# (`_lock_ttl`): an entry can only be reclaimed after its reader's lock has expired, so its old owner
# has stopped writing it unless one flush outlived the lock several times over. Even then nothing is
# stored twice (the storage is idempotent) and the counter is not decremented twice (only XDELs that
# removed an entry count): the lock saves work and keeps order, correctness does not rest on it.
FLUSH_LOCK_TTL: Final = 10.0
_MAX_READ_COUNT: Final = 1000  # entries per XREADGROUP/XAUTOCLAIM call

# KEYS: stream, counter, then the last-id key of each stream in the batch. ARGV: bound, total trades, then
# the last id of each of those streams, then (count, payload) per entry. Check and add in one step, so
# concurrent appenders overshoot the bound by at most one call each; the last id handed on of each stream
# moves with its entries, never without them.
_APPEND_LUA = """
local held = tonumber(redis.call('GET', KEYS[2]) or '0')
if held >= tonumber(ARGV[1]) then return -1 end
local ids = #KEYS - 2
for i = 1, ids do redis.call('SET', KEYS[i + 2], ARGV[i + 2]) end
for i = ids + 3, #ARGV, 2 do redis.call('XADD', KEYS[1], '*', 'n', ARGV[i], 't', ARGV[i + 1]) end
redis.call('INCRBY', KEYS[2], ARGV[2])
return (#ARGV - ids - 2) / 2
"""
# KEYS: stream. ARGV: group, consumer, start ("0" or ">"), trades wanted, most entries. XREADGROUP
# without BLOCK is allowed in a script; an entry deleted while pending comes back with no fields.
_READ_LUA = """
local start, have, out = ARGV[3], 0, {}
local want, most = tonumber(ARGV[4]), tonumber(ARGV[5])
while have < want and #out < most do
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], start)
  if not reply or #reply[1][2] == 0 then break end
  local entry = reply[1][2][1]
  out[#out + 1] = entry
  local fields = entry[2] or {}
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then have = have + (tonumber(fields[i + 1]) or 0) end
  end
  if start ~= '>' then start = entry[1] end
end
return out
"""
# KEYS: stream, counter. ARGV: group, then (id, count) per entry. Returns the trades still waiting.
_ACK_LUA = """
local gone = 0
for i = 2, #ARGV, 2 do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then gone = gone + tonumber(ARGV[i + 1]) end
end
local left = redis.call('DECRBY', KEYS[2], gone)
if left < 0 or (left ~= 0 and redis.call('XLEN', KEYS[1]) == 0) then
  redis.call('SET', KEYS[2], 0)
  left = 0
end
return left
"""
_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

class BufferFull(Exception):
    """The buffer holds COLLECTOR_BUFFER_MAX_TRADES trades already; nothing was added."""


@dataclass(frozen=True)
class FlushResult:
    entries: int = 0      # stream entries written and acknowledged
    trades: int = 0       # trades in them
    inserted: int = 0     # new rows
    duplicates: int = 0   # rows stored already (a redelivery)
    reclaimed: int = 0    # entries taken over from a flusher that stopped
    dead_lettered: int = 0  # trades or entries refused (undecodable, invalid, refused by the database)

    def __add__(self, other: FlushResult) -> FlushResult:
        return FlushResult(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class _Entry:
    id: bytes
    count: int
    trades: list[Trade] | None  # None: undecodable
    invalid: tuple[DeadLetter, ...] = ()  # trades of the entry that fail re-validation
    raw: bytes = b""  # the payload, kept for the dead letter of an undecodable entry


# --- Encoding -----------------------------------------------------------------------------------------

def encode_trades(trades: Sequence[Trade]) -> bytes:
    """A batch of trades as orjson rows (the Trade fields in order: exact strings, integers, booleans)."""
    return orjson.dumps([tuple(t) for t in trades])


def decode_trades(payload: bytes | str) -> list[Trade]:
    """The inverse of `encode_trades`; raises ValueError/TypeError on anything it did not make.
    Not validated: `_entry` re-validates each trade (the buffer is a trust boundary)."""
    return [Trade(*row) for row in orjson.loads(payload)]


def _entry_fields(trades: Sequence[Trade], chunk: int) -> Iterator[tuple[int, bytes]]:
    for start in range(0, len(trades), chunk):
        part = trades[start:start + chunk]
        yield len(part), encode_trades(part)


# --- Producing (asyncio: the stream tasks) ------------------------------------------------------------

async def append_trades(r: redis.asyncio.Redis, trades: Sequence[Trade], *, chunk: int = DEFAULT_CHUNK,
                        last_ids: Mapping[str, int] | None = None) -> int:
    """Append `trades` as entries of at most `chunk` trades, all or none; returns the entries added.
    `last_ids` (key: id, the resume point of each stream in the batch) are written in the same step.

    Raises BufferFull (adding nothing) when the buffer already holds COLLECTOR_BUFFER_MAX_TRADES trades:
    the caller holds back and the REST backfill fills the hole later (ingestion never waits). No MAXLEN.
    """
    if not trades:
        return 0
    last_ids = dict(last_ids or {})
    args: list[int | bytes | str] = [settings.COLLECTOR_BUFFER_MAX_TRADES, len(trades), *last_ids.values()]
    for count, payload in _entry_fields(trades, max(1, chunk)):
        args += [count, payload]
    keys = [BUFFER_STREAM, BUFFER_TRADES, *last_ids]
    added = int(await r.register_script(_APPEND_LUA)(keys=keys, args=args))
    if added < 0:
        raise BufferFull(f"hand-off buffer holds {settings.COLLECTOR_BUFFER_MAX_TRADES} trades or more; "
                         f"{len(trades)} not added")
    return added


async def buffer_trades(r: redis.asyncio.Redis) -> int:
    """Trades appended and not yet written (the counter: exact, not XLEN x chunk)."""
    return int(await r.get(BUFFER_TRADES) or 0)


# --- Consuming (sync: the flush task) -----------------------------------------------------------------

def ensure_group(r: redis.Redis) -> None:
    """Create the consumer group (and the stream) unless it exists. It starts at id 0, not `$`: entries
    appended before the group existed are flushed too."""
    try:
        r.xgroup_create(BUFFER_STREAM, BUFFER_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def flush_once(r: redis.Redis, consumer: str, *, batch: int | None = None, reclaim_idle: float | None = None,
               using: str = DEFAULT_DB_ALIAS, store: Store = store_trades) -> FlushResult:
    """Write `batch` waiting trades (overshooting by one entry at most) in one `store` call, then
    acknowledge and delete them.

    Order: take over entries idle for `reclaim_idle` s (a flusher that died), re-read this consumer's own
    pending entries (a failed write), then new entries. If `store` raises, nothing is acknowledged: the
    entries stay pending to `consumer` and the next call writes them first. Returns an empty result at
    once when another flush holds the lock.
    """
    batch = batch or settings.COLLECTOR_FLUSH_BATCH
    idle = settings.COLLECTOR_RECLAIM_IDLE if reclaim_idle is None else reclaim_idle
    token = _lock_acquire(r, _lock_ttl(idle))
    if token is None:
        logger.debug("buffer: %s: another flush holds the lock", consumer)
        return FlushResult()
    try:
        return _flush_locked(r, consumer, batch, idle, using=using, store=store)
    finally:
        _lock_release(r, token)


def flush_all(r: redis.Redis, consumer: str, *, max_seconds: float = 30.0, batch: int | None = None,
              reclaim_idle: float | None = None, using: str = DEFAULT_DB_ALIAS,
              store: Store = store_trades) -> FlushResult:
    """Flush until nothing is left, another flusher holds the lock, or `max_seconds` (monotonic) is up.
    A database error propagates (after what was written before it is acknowledged): the task decides."""
    deadline = time.monotonic() + max_seconds
    total = FlushResult()
    while time.monotonic() < deadline:
        done = flush_once(r, consumer, batch=batch, reclaim_idle=reclaim_idle, using=using, store=store)
        total += done
        if done.entries == 0:
            break
    return total


def buffer_stats(r: redis.Redis) -> dict[str, Any]:
    """Depth for status pages: entries, entries pending (read, not written), trades waiting, oldest age."""
    with r.pipeline(transaction=False) as pipe:
        pipe.xlen(BUFFER_STREAM)
        pipe.get(BUFFER_TRADES)
        pipe.xrange(BUFFER_STREAM, count=1)
        pipe.time()
        length, waiting, oldest, (seconds, micros) = pipe.execute()
    try:
        summary: Any = r.xpending(BUFFER_STREAM, BUFFER_GROUP)
    except redis.ResponseError:  # no group yet
        summary = {"pending": 0}
    age = None
    if oldest:  # an entry id's first part is the Redis server's clock in ms: compare with the same clock
        age = max(0.0, seconds + micros / 1e6 - _id_millis(oldest[0][0]) / 1000)
    return {"length": int(length), "pending": int(summary["pending"]), "trades_waiting": int(waiting or 0),
            "oldest_age_seconds": age}


def _flush_locked(r: redis.Redis, consumer: str, batch: int, idle: float, *, using: str,
                  store: Store) -> FlushResult:
    ensure_group(r)  # one round trip a flush; the stream (and its group) may have been deleted
    reclaimed = _reclaim(r, consumer, idle, batch)
    entries = _read(r, consumer, "0", batch)  # own pending first: a failed write, and what was reclaimed
    entries += _read(r, consumer, ">", batch - sum(e.count for e in entries))
    if not entries:
        return FlushResult()
    entries.sort(key=lambda e: _id_key(e.id))
    trades = [t for e in entries if e.trades is not None for t in e.trades]
    stored = store_or_dead_letter(trades, FLUSH, using=using, r=r, store=store) if trades else StoreResult(0, 0)
    # Kept before the entries are acknowledged: a crash in between dead-letters twice, never loses one.
    dead = dead_letter(r, _dead_letters(entries)) + stored.rejected
    left = _ack(r, entries)  # only after the commit (every trade once)
    logger.info("buffer: %s wrote %d trades from %d entries (%d new, %d duplicates, %d reclaimed, "
                "%d dead-lettered); %d waiting", consumer, len(trades), len(entries), stored.inserted,
                stored.duplicates, reclaimed, dead, left)
    return FlushResult(len(entries), len(trades), stored.inserted, stored.duplicates,
                       min(reclaimed, len(entries)), dead)


def _reclaim(r: redis.Redis, consumer: str, idle: float, batch: int) -> int:
    """Take over entries another flusher read and left unacknowledged for `idle` s; they join this
    consumer's pending entries, read next. Returns how many were taken."""
    reply = r.xautoclaim(BUFFER_STREAM, BUFFER_GROUP, consumer, min_idle_time=int(idle * 1000),
                         start_id="0-0", count=min(batch, _MAX_READ_COUNT), justid=True)
    claimed = len(reply)  # with JUSTID, redis-py returns only the claimed ids
    if claimed:
        logger.warning("buffer: %s reclaimed %d entries left pending by a stopped flusher", consumer, claimed)
    return claimed


def _read(r: redis.Redis, consumer: str, start: str, want: int) -> list[_Entry]:
    """Entries from `start` ("0": this consumer's pending ones; ">": new ones) until `want` trades or
    more, in one round trip: the script reads one entry at a time and adds up their trade counts, so a
    batch never overshoots by more than one entry, whatever the sizes of the entries."""
    if want <= 0:
        return []
    reply = r.register_script(_READ_LUA)(keys=[BUFFER_STREAM],
                                         args=[BUFFER_GROUP, consumer, start, want, _MAX_READ_COUNT])
    return [_entry(entry_id, _pairs(data)) for entry_id, data in reply]


def _pairs(data: list[Any] | None) -> dict[Any, Any]:
    return dict(zip(data[::2], data[1::2], strict=True)) if data else {}


def _entry(entry_id: bytes | str, data: dict[Any, Any]) -> _Entry:
    """An entry read from the buffer, decoded and re-validated trade by trade (Redis is the trust boundary:
    whoever can write to Redis must not be able to store what the exchange could not have sent)."""
    raw_id = entry_id.encode() if isinstance(entry_id, str) else entry_id
    count, payload = _field(data, "n"), _field(data, "t")
    number = int(count) if count is not None and count.isdigit() else 0
    try:
        decoded = decode_trades(payload) if payload is not None else None
    except (ValueError, TypeError):
        decoded = None
    if decoded is None:
        logger.error("buffer: entry %s cannot be decoded; dead-lettered", raw_id.decode())
        return _Entry(raw_id, number, None, raw=payload or b"")
    trades, invalid = [], []
    for trade in decoded:
        try:
            trades.append(validate_trade(trade))
        except ParseError as exc:
            invalid.append(DeadLetter(INVALID, _stream_of(trade), exc.reason, trade_data(trade)))
    if invalid:
        logger.error("buffer: entry %s holds %d invalid trades (first: %s); dead-lettered, the rest stored",
                     raw_id.decode(), len(invalid), invalid[0].reason)
    return _Entry(raw_id, number, trades, tuple(invalid))


def _stream_of(trade: Any) -> str:
    try:
        return str(trade.stream)
    except (AttributeError, TypeError):
        return "-"


def _dead_letters(entries: list[_Entry]) -> list[DeadLetter]:
    """What the buffer itself refuses: entries it cannot decode, trades that fail re-validation."""
    letters = [DeadLetter(UNDECODABLE, "-", f"buffer entry {e.id.decode()} cannot be decoded",
                          e.raw.decode(errors="replace")) for e in entries if e.trades is None]
    letters += [letter for e in entries for letter in e.invalid]
    return letters


def _field(data: dict[Any, Any], name: str) -> bytes | None:
    value = data.get(name.encode(), data.get(name))
    return value.encode() if isinstance(value, str) else value


def _ack(r: redis.Redis, entries: list[_Entry]) -> int:
    """XACK + XDEL + counter decrement, atomically; returns the trades still waiting."""
    args: list[bytes | int | str] = [BUFFER_GROUP]
    for entry in entries:
        args += [entry.id, entry.count]
    return int(r.register_script(_ACK_LUA)(keys=[BUFFER_STREAM, BUFFER_TRADES], args=args))


def _lock_ttl(reclaim_idle: float) -> float:
    """Below half the reclaim idle time always (see FLUSH_LOCK_TTL), at least 1 ms."""
    return max(0.001, min(FLUSH_LOCK_TTL, reclaim_idle / 2))


def _lock_acquire(r: redis.Redis, ttl: float) -> str | None:
    token = secrets.token_hex(16)
    return token if r.set(FLUSH_LOCK, token, nx=True, px=max(1, int(ttl * 1000))) else None


def _lock_release(r: redis.Redis, token: str) -> None:
    """Compare-and-delete: a lock that expired and was taken by another flush is left to it."""
    r.register_script(_UNLOCK_LUA)(keys=[FLUSH_LOCK], args=[token])


def _id_key(entry_id: bytes) -> tuple[int, int]:
    millis, _, seq = entry_id.partition(b"-")
    return int(millis), int(seq or 0)


def _id_millis(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])
