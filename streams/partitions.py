"""Monthly partitions of the trades table (PostgreSQL): made ahead and on demand, dropped once sealed in the lake.

`streams_trade` is partitioned by RANGE of trade_time (PostgreSQL's declarative partitioning), one partition
per UTC month, named `streams_trade_YYYY_MM`. Why months and not days: every query that is not bounded in
time (the last stored id, the audit's id windows, a trade looked up by id) plans, locks and probes every
partition; measured on this project's machine with PostgreSQL 15, eight years of daily partitions (2,922)
made `max(trade_id)` of one stream take 3-5 s and hold 5,847 locks (the default lock table has ~6,400
slots for the whole server: creating them in one transaction ran out of shared memory), against 4-9 ms and
77 locks for three years of monthly ones. A day's queries find their rows through the BRIN index on
trade_time instead.

Each partition carries its own unique index on (instrument_id, trade_id): the exchange's identity of a
trade. A partitioned table's unique indexes must contain the partition key, and (instrument, trade_id,
trade_time) would store a trade twice if two sources gave its time in different units (the archive's
milliseconds before 2025, REST in microseconds). Per partition, the identity is exact; across partitions it
holds because a trade's time cannot move it to another month: a millisecond time is the microsecond one
truncated, and months start on whole milliseconds. INSERT ... ON CONFLICT DO NOTHING without a conflict
target uses every unique index of the partition a row goes to.

A partition is made by CREATE TABLE + ATTACH PARTITION, which takes a SHARE UPDATE EXCLUSIVE lock on the
parent (inserts and reads go on), under an advisory lock so that two writers never race on the same month.
A partition is dropped only when every day of its month is sealed in the lake and past the hot window
(workers.seal): detached CONCURRENTLY first, so that writers never queue behind the drop.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger(__name__)

TABLE = "streams_trade"
_NAME = re.compile(rf"^{TABLE}_(\d{{4}})_(\d{{2}})$")
_ADVISORY_KEY = 0x7472616465  # pg_advisory_xact_lock key serialising partition DDL ("trade")
_LOCK_TIMEOUT = "5s"  # DDL waits at most this long for the parent's lock (55P03, transient: retried)


@dataclass(frozen=True, order=True)
class Month:
    """A UTC calendar month: one partition."""

    year: int
    month: int

    @classmethod
    def of_micros(cls, micros: int) -> Month:
        moment = time.gmtime(micros // 1_000_000)
        return cls(moment.tm_year, moment.tm_mon)

    @classmethod
    def of(cls, moment: datetime) -> Month:
        moment = moment.astimezone(UTC)
        return cls(moment.year, moment.month)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.next().start

    @property
    def days(self) -> int:
        return calendar.monthrange(self.year, self.month)[1]

    @property
    def name(self) -> str:
        return f"{TABLE}_{self.year:04d}_{self.month:02d}"

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)


def months_between(first: Month, last: Month) -> Iterator[Month]:
    """first, ..., last (inclusive)."""
    month = first
    while month <= last:
        yield month
        month = month.next()


def month_of_name(name: str) -> Month | None:
    found = _NAME.match(name)
    return Month(int(found[1]), int(found[2])) if found else None


# --- DDL (a DB-API cursor; also used by the migration that made the layout) ---------------------------

def existing(cursor: Any) -> set[Month]:
    """The months that have a partition (named as this module names them)."""
    cursor.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                   "WHERE i.inhparent = %s::regclass", [TABLE])
    return {month for (name,) in cursor.fetchall() if (month := month_of_name(name)) is not None}


def create(cursor: Any, month: Month, *, identity_index: bool = True) -> None:
    """Make `month`'s partition (empty): a table like the parent, its identity index, attached.
    The caller holds the advisory lock and knows the month has none (`ensure` does both)."""
    name, bounds = month.name, f"FROM ('{month.start.isoformat()}') TO ('{month.end.isoformat()}')"
    # INCLUDING INDEXES copies the parent's BRIN index, which ATTACH then adopts instead of building one.
    cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                   "INCLUDING INDEXES INCLUDING STORAGE)")
    if identity_index:
        create_identity_index(cursor, month)
    cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES {bounds}")


def create_identity_index(cursor: Any, month: Month) -> None:
    # fillfactor 100: trades arrive in id order per stream, so the index grows at the right end of each
    # stream's key range and full pages are never split again (measured 28.6 bytes per entry).
    cursor.execute(f"CREATE UNIQUE INDEX {month.name}_identity ON {month.name} (instrument_id, trade_id) "
                   "WITH (fillfactor = 100)")


def ensure(cursor: Any, months: Iterable[Month]) -> list[Month]:
    """Make the partitions of `months` that do not exist yet; returns those made. Call inside a
    transaction: the advisory lock is held until it ends, so concurrent callers wait, then find them."""
    wanted = sorted(set(months))
    if not wanted:
        return []
    cursor.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_KEY])
    have = existing(cursor)
    made = [month for month in wanted if month not in have]
    for month in made:
        create(cursor, month)
    if made:
        logger.info("partitions: made %s", ", ".join(m.name for m in made))
    return made


def detach_and_drop(cursor: Any, month: Month) -> None:
    """Take `month`'s partition out of the table without stopping writers, then drop it.

    DETACH PARTITION ... CONCURRENTLY takes only a SHARE UPDATE EXCLUSIVE lock on the parent (inserts and
    reads go on; a plain DROP TABLE would take ACCESS EXCLUSIVE and queue every writer behind it), and waits
    for the transactions that use the partition to end. It cannot run inside a transaction block: `cursor`
    must be in autocommit. A detach interrupted half-way leaves the partition "detach pending": finished here.
    """
    cursor.execute("SELECT i.inhdetachpending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                   "WHERE i.inhparent = %s::regclass AND c.relname = %s", [TABLE, month.name])
    found = cursor.fetchone()
    if found is not None:
        pending = bool(found[0])
        cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {month.name} {'FINALIZE' if pending else 'CONCURRENTLY'}")
    cursor.execute(f"DROP TABLE IF EXISTS {month.name}")
    logger.warning("partitions: detached and dropped %s (every day of it is sealed in the lake)", month.name)


# --- Maintenance (the periodic task) -------------------------------------------------------------------

@dataclass(frozen=True)
class Maintenance:
    created: list[str] = field(default_factory=list)


def maintain(now: datetime | None = None, *, ahead: int | None = None, using: str | None = None) -> Maintenance:
    """Make the partitions of this month and the `ahead` (COLLECTOR_PARTITIONS_AHEAD) next ones. Dropping is
    the dataset's retention (workers.seal): only months whose every day is sealed in the lake go. Nothing to
    do on SQLite, whose trades table is a plain one."""
    from django.conf import settings
    from django.db import DEFAULT_DB_ALIAS, connections, transaction

    alias = using or DEFAULT_DB_ALIAS
    if connections[alias].vendor != "postgresql":
        return Maintenance()
    now = now or datetime.now(UTC)
    ahead = settings.COLLECTOR_PARTITIONS_AHEAD if ahead is None else ahead
    first = Month.of(now)
    months = [first]
    for _ in range(ahead):
        months.append(months[-1].next())
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        made = ensure(cursor, months)
    return Maintenance([m.name for m in made])


def table_bytes(cursor: Any) -> int:
    """Heap, indexes and TOAST of every partition (pg_total_relation_size of the parent alone is 0)."""
    cursor.execute("SELECT COALESCE(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
                   "WHERE inhparent = %s::regclass", [TABLE])
    return int(cursor.fetchone()[0])
