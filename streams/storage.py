"""Writing trades: one idempotent statement per batch, never a read of trades before the write.

PostgreSQL (the lean layout, `streams.models.StoredTrade`): COPY the batch, as text we build
ourselves from the exchange's own decimal strings, straight into the partitioned table `streams_trade`,
a chunk at a time so that the server parses one while the next is formatted. If a partition's identity
index refuses it (a trade of the batch was stored already, which only a redelivery causes), the batch
goes through a temporary staging table and one INSERT ... SELECT ... ON CONFLICT DO NOTHING instead.
Each process learns the instruments' ids and the months that have a partition once (kept after their
transaction commits): a batch of a new instrument, or of a month without a partition, first makes it.
Times are stored to the microsecond whatever unit the trade came in. Figures: docs/benchmarks.md.
SQLite: INSERT OR IGNORE into the plain table.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Q
from django.db.models.signals import post_migrate
from psycopg.errors import CheckViolation, UniqueViolation

from streams import partitions
from streams.binance.protocol import Trade, decimal_fits
from streams.binance.streamid import StreamId
from streams.failures import Failure, classify, describe
from streams.models import Instrument, PriceUpdate, StoredTrade, trade_key

logger = logging.getLogger(__name__)

_TABLE = StoredTrade._meta.db_table
# The table's own column order (streams/migrations/0002): COPY reads the fields in this order.
_COLUMNS = ", ".join(("trade_time", "trade_id", "first_trade_id", "last_trade_id", "event_time", "received_time",
                      "event_after_us", "received_after_us", "instrument_id", "is_market_maker", "price", "volume"))
_MICROSECOND_THRESHOLD = 10**14
_DAY_MICROS = 86_400_000_000
_KEY, _TRADE_TS = operator.itemgetter(0, 1), operator.itemgetter(5)  # (symbol, channel), trade_ts of a Trade
_COPY_CHUNK = 1000  # rows per COPY message

_DIRECT_COPY = f"COPY {_TABLE} ({_COLUMNS}) FROM STDIN"
_STAGE_DDL = f"CREATE TEMPORARY TABLE IF NOT EXISTS trade_stage (LIKE {_TABLE}) ON COMMIT DELETE ROWS"
_STAGE_COPY = f"COPY trade_stage ({_COLUMNS}) FROM STDIN"
# No conflict target: each partition's unique identity index is the arbiter (streams/partitions.py).
_STAGE_INSERT = f"INSERT INTO {_TABLE} ({_COLUMNS}) SELECT {_COLUMNS} FROM trade_stage ON CONFLICT DO NOTHING"
_SINGLE_INSERT = f"""
INSERT INTO {_TABLE} ({_COLUMNS})
VALUES (%s::timestamptz, %s, %s, %s, %s::timestamptz, %s::timestamptz, %s, %s, %s, %s, %s::numeric, %s::numeric)
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True)
class Refusal:
    """A trade the database refused for its content, and its reason (the database's own words)."""

    trade: Trade
    reason: str


@dataclass(frozen=True)
class StoreResult:
    inserted: int   # new rows
    duplicates: int  # already stored (at-least-once delivery)
    refused: tuple[Refusal, ...] = ()  # refused by the database for their content: to dead-letter

    @property
    def rejected(self) -> int:
        return len(self.refused)

    def __add__(self, other: StoreResult) -> StoreResult:
        return StoreResult(self.inserted + other.inserted, self.duplicates + other.duplicates,
                           self.refused + other.refused)


def store_trades(trades: Sequence[Trade], using: str = DEFAULT_DB_ALIAS) -> StoreResult:
    """Store `trades` in one transaction; a trade already stored is skipped, never duplicated.

    One poison value never stops storage (nothing fails silently): when the database refuses the batch
    for its content (streams.failures: a value out of range, a constraint), the batch is bisected
    until the refused trades are isolated; the rest is stored and the refused ones are returned in
    `refused` for the caller to dead-letter. Transient and fatal errors propagate: nothing was stored.
    """
    unfit = _unfit(trades)
    if unfit:  # the column would keep them, but no exchange value has them: refuse, never round (exact decimals)
        refused = tuple(Refusal(t, f"price {t.price_text} or volume {t.quantity_text} does not fit numeric(28,8)")
                        for t in unfit)
        for refusal in refused:
            logger.error("%s: trade %d refused: %s", refusal.trade.stream, refusal.trade.trade_id, refusal.reason)
        unfit_ids = {id(t) for t in unfit}
        return store_trades([t for t in trades if id(t) not in unfit_ids], using) + StoreResult(0, 0, refused)
    if not trades:
        return StoreResult(0, 0)
    try:
        inserted = _store(trades, using)
    except Exception as exc:
        if classify(exc) is not Failure.CONTENT:
            raise
        if len(trades) == 1:
            trade = trades[0]
            logger.error("%s: trade %d refused by the database: %s", trade.stream, trade.trade_id, describe(exc))
            return StoreResult(0, 0, (Refusal(trade, describe(exc)),))
        middle = len(trades) // 2
        return store_trades(trades[:middle], using) + store_trades(trades[middle:], using)
    return StoreResult(inserted, len(trades) - inserted)


def _unfit(trades: Sequence[Trade]) -> list[Trade]:
    """The trades whose price or quantity numeric(28,8) would not hold: `decimal_fits`, with its common
    case (a point, at most 20 digits before it and 8 after) decided here first, as this runs on every trade."""
    unfit = []
    for trade in trades:
        price, quantity = trade[3], trade[4]
        point, other = price.find("."), quantity.find(".")
        if 0 <= point <= 20 and len(price) - point <= 9 and 0 <= other <= 20 and len(quantity) - other <= 9:
            continue
        if not (decimal_fits(price) and decimal_fits(quantity)):
            unfit.append(trade)
    return unfit


def _store(trades: Sequence[Trade], using: str) -> int:
    store = _store_postgresql if connections[using].vendor == "postgresql" else _store_orm
    return store(trades, using)


def last_stored_ids(streams: Sequence[StreamId], using: str = DEFAULT_DB_ALIAS) -> dict[StreamId, int]:
    """The highest stored trade id per stream, for those that have any: on PostgreSQL a walk down the
    identity index of each partition, one row from each."""
    found = {}
    for sid in streams:
        top = (PriceUpdate.objects.using(using).filter(ticker_symbol=sid.symbol, channel=sid.channel)
               .order_by("-trade_id").values_list("trade_id", flat=True).first())
        if top is not None:
            found[sid] = top
    return found


def _micros(ts: int) -> int:
    return ts if ts >= _MICROSECOND_THRESHOLD else ts * 1000


# --- What each process knows: instrument ids, months with a partition ----------------------------------

_INSTRUMENTS: dict[str, dict[tuple[str, str], int]] = {}  # alias -> (symbol, channel) -> id
_MONTHS: dict[str, set[partitions.Month]] = {}            # alias -> months known to have a partition


def forget_known(**_: Any) -> None:
    """Forget what was learnt (the tests' database flush emits post_migrate; so does `migrate`)."""
    _INSTRUMENTS.clear()
    _MONTHS.clear()


post_migrate.connect(forget_known, dispatch_uid="streams.storage.forget_known")


def instrument_ids(keys: set[tuple[str, str]], using: str = DEFAULT_DB_ALIAS) -> dict[tuple[str, str], int]:
    """The id of each (symbol, channel), made the first time one is met (concurrent writers agree: the
    unique constraint decides and both read the winner). Kept once the making transaction commits."""
    known = _INSTRUMENTS.setdefault(using, {})
    missing = keys - known.keys()
    if not missing:
        return known
    with transaction.atomic(using=using):
        objects = Instrument.objects.using(using)
        objects.bulk_create([Instrument(symbol=s, channel=c) for s, c in sorted(missing)], ignore_conflicts=True)
        wanted = functools.reduce(lambda q, key: q | Q(symbol=key[0], channel=key[1]), missing, Q())
        made = {(i.symbol, i.channel): i.id for i in objects.filter(wanted)}
    transaction.on_commit(lambda: known.update(made), using=using)
    return {**known, **made}


def _ensure_partitions(times: Sequence[int], using: str) -> None:
    """Make the partitions of the months of `times` (µs) that this process does not know of yet."""
    known = _MONTHS.setdefault(using, set())
    first, last = partitions.Month.of_micros(min(times)), partitions.Month.of_micros(max(times))
    if first == last:  # the common case: a batch is seconds of trades, its oldest and newest tell its month
        months = {first}
    else:
        months = {partitions.Month.of_micros(day * _DAY_MICROS) for day in {us // _DAY_MICROS for us in times}}
    if months <= known:
        return
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        partitions.ensure(cursor, months - known)
    transaction.on_commit(lambda: known.update(months), using=using)


def _no_partition(exc: BaseException) -> bool:
    """PostgreSQL's "no partition of relation ... found for row": a check violation naming the table but
    no constraint (locale-independent)."""
    cause = exc if isinstance(exc, CheckViolation) else exc.__cause__
    return (isinstance(cause, CheckViolation) and cause.diag.constraint_name is None
            and cause.diag.table_name == _TABLE)


# --- PostgreSQL ------------------------------------------------------------------------------------------

def _store_postgresql(trades: Sequence[Trade], using: str) -> int:
    try:
        return _write_postgresql(trades, using)
    except Exception as exc:
        if not _no_partition(exc):
            raise
        # A partition this process knew of was dropped since (retention), and a trade of its month came.
        logger.warning("trades of a month whose partition was dropped: making it again")
        _MONTHS.pop(using, None)
        return _write_postgresql(trades, using)


def _write_postgresql(trades: Sequence[Trade], using: str) -> int:
    connection = connections[using]
    ids = instrument_ids(set(map(_KEY, trades)), using)
    times = [ts if ts >= _MICROSECOND_THRESHOLD else ts * 1000 for ts in map(_TRADE_TS, trades)]
    _ensure_partitions(times, using)
    if len(trades) == 1:  # immediate mode: one statement, its own transaction; inside a caller's transaction a
        # savepoint, so that a refused trade (where the bisection of a refused batch ends) does not abort it
        guard = transaction.atomic(using=using) if connection.in_atomic_block else contextlib.nullcontext()
        with guard, connection.cursor() as cursor:
            cursor.execute(_SINGLE_INSERT, _values(trades[0], times[0], ids))
            return int(cursor.rowcount)
    try:
        # The fast path: COPY straight into the table. An identity index refuses the whole batch if any
        # trade of it is stored already (a redelivery: rare), and the slower path below skips those.
        with transaction.atomic(using=using), connection.cursor() as cursor:
            with cursor.cursor.copy(_DIRECT_COPY) as copy:
                for chunk in _copy_chunks(trades, times, ids):
                    copy.write(chunk)
            return len(trades)
    except UniqueViolation:
        pass  # a trade of the batch is stored already: insert the others
    with transaction.atomic(using=using), connection.cursor() as cursor:
        raw = connection.connection
        if getattr(connection, "_trade_stage_of", None) is not raw:
            # Once per database session (temporary tables live as long as it), counted only once the
            # creating transaction commits: a rollback takes the table with it.
            cursor.execute(_STAGE_DDL)
            transaction.on_commit(lambda: setattr(connection, "_trade_stage_of", raw), using=using)
        with cursor.cursor.copy(_STAGE_COPY) as copy:
            for chunk in _copy_chunks(trades, times, ids):
                copy.write(chunk)
        cursor.execute(_STAGE_INSERT)
        return int(cursor.rowcount)


_NULL = "\\N"
_INT4_LOW, _INT4_HIGH = -(2**31), 2**31 - 1


def _copy_chunks(trades: Sequence[Trade], times: Sequence[int], ids: dict[tuple[str, str], int]) -> Iterator[str]:
    """COPY's text format, `_COPY_CHUNK` rows at a time. Symbols and channels are validated alphanumerics,
    numbers are digits and a point: nothing needs escaping. The hot loop of bulk storage: it unpacks each
    trade once, formats each second once (trades come in runs within a second), and calls nothing else in
    the common case (see `_after` for the times)."""
    null, low, high = _NULL, _INT4_LOW, _INT4_HIGH
    second, second_text, key, instrument = -1, "", ("", ""), ""
    for start in range(0, len(trades), _COPY_CHUNK):
        lines = []
        for (symbol, channel, trade_id, price, quantity, _, event_ts, maker, first, last, received), us in zip(
                trades[start:start + _COPY_CHUNK], times[start:start + _COPY_CHUNK], strict=True):
            if us // 1_000_000 != second:
                second = us // 1_000_000
                second_text = _second_text(second)
            if key[0] != symbol or key[1] != channel:
                key = (symbol, channel)
                instrument = str(ids[key])
            event = (event_ts if event_ts >= _MICROSECOND_THRESHOLD else event_ts * 1000) - us
            after = received - us if received is not None else 0
            if low <= event <= high and low <= after <= high:  # the common case: both fit an integer
                times_text = f"{null}\t{null}\t{null if event == 0 else event}\t{null if received is None else after}"
            else:
                times_text = "\t".join(map(str, _after(event, us, received, null)))
            lines.append(f"{second_text}.{us % 1_000_000:06d}+00\t{trade_id}\t{null if first is None else first}\t"
                         f"{null if last is None else last}\t{times_text}\t{instrument}\t{'t' if maker else 'f'}\t"
                         f"{price}\t{quantity}\n")
        yield "".join(lines)


def _after(event: int, us: int, received: int | None, null: Any) -> tuple[Any, Any, Any, Any]:
    """(event_time, received_time, event_after_us, received_after_us) of a trade at `us` whose event time is
    `event` µs after it: the times as microseconds after the trade time when that fits an integer (35
    minutes), else whole; `null` where there is nothing to say (no event time of its own, not received live)."""
    event_time, event_after = (null, null) if event == 0 else (
        (null, event) if _INT4_LOW <= event <= _INT4_HIGH else (_timestamp_text(us + event), null))
    if received is None:
        return event_time, null, event_after, null
    after = received - us
    if _INT4_LOW <= after <= _INT4_HIGH:
        return event_time, null, event_after, after
    return event_time, _timestamp_text(received), event_after, null


def _values(t: Trade, us: int, ids: dict[tuple[str, str], int]) -> tuple[Any, ...]:
    event_time, received_time, event_after, received_after = _after(_micros(t.event_ts) - us, us, t.received_us, None)
    return (_timestamp_text(us), t.trade_id, t.first_trade_id, t.last_trade_id, event_time, received_time,
            event_after, received_after, ids[(t.symbol, t.channel)], t.is_buyer_maker, t.price_text,
            t.quantity_text)


@functools.lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _timestamp_text(us: int) -> str:
    """Microseconds since the epoch as PostgreSQL timestamptz text, exactly. Trades come in runs within
    the same second, so the formatted second is cached."""
    seconds, fraction = divmod(us, 1_000_000)
    return f"{_second_text(seconds)}.{fraction:06d}+00"


# --- SQLite (and any other backend) ----------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _store_orm(trades: Sequence[Trade], using: str) -> int:
    """INSERT OR IGNORE; the count comes from the table's change counter."""
    ids = instrument_ids({(t.symbol, t.channel) for t in trades}, using)
    rows = [PriceUpdate(key=trade_key(t.symbol, t.channel, t.trade_id), instrument_id=ids[(t.symbol, t.channel)],
                        ticker_symbol=t.symbol, channel=t.channel, trade_id=t.trade_id, price=t.price,
                        volume=t.quantity, trade_time=t.trade_time, event_time=t.event_time,
                        received_time=None if t.received_us is None else _EPOCH + timedelta(microseconds=t.received_us),
                        is_market_maker=t.is_buyer_maker, first_trade_id=t.first_trade_id,
                        last_trade_id=t.last_trade_id) for t in trades]
    connection = connections[using]
    with transaction.atomic(using=using):
        before = _total_changes(connection)
        PriceUpdate.objects.using(using).bulk_create(rows, ignore_conflicts=True, batch_size=500)
        after = _total_changes(connection)
    return after - before if before is not None and after is not None else len(rows)


def _total_changes(connection: object) -> int | None:
    if getattr(connection, "vendor", "") != "sqlite":
        return None
    with connection.cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute("SELECT total_changes()")
        return int(cursor.fetchone()[0])
