"""How days move from the database into the lake, and stay right there.

- Sealing (`seal_due`): a closed day that the completeness report proves complete is written into the lake
  (streams.lake.files: whole or not at all) and recorded in its manifest (streams.models.SealedDay). A day
  whose stored facts change later (healed, repaired) differs from its manifest and is sealed again, from the
  union of what the lake and the database hold of it.
- The hot window (`drop_cold`): DATASET_HOT_DAYS days also stay in the database; an older month's partition
  (PostgreSQL) is detached and dropped only when every day of it is sealed complete and the lake holds every
  row the partition holds. SQLite drops such days' rows.
- The scrub (`scrub`): every sealed file is read again and checked against its manifest (SHA-256, rows, first
  and last id, consecutive ids), and every hot day's count and ids against its coverage record, at least once
  per DATASET_SCRUB_DAYS, spread evenly over the passes. A damaged file says so (state, metric, /status/) and
  is rebuilt from the database when it still holds the day; a hot day that changed is computed again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import connection
from django.db.models import Count, Exists, OuterRef, Sum
from django.utils import timezone

from streams import partitions, queries, tiers
from streams.dataset import database_day, union
from streams.lake.files import DayFile, consecutive, exists, read_day, verify_day, write_day
from streams.lake.layout import DayKey
from streams.lake.schema import FILE_SCHEMA
from streams.models import Instrument, PriceUpdate, SealedDay
from workers.coverage import SPOT, day_entry, mark_days, seals_of, utc_today
from workers.keys import DATASET_FACTS, stream_id
from workers.models import DayCoverage, Verdict
from workers.redis import sync_redis

logger = logging.getLogger(__name__)

SEAL_INTERVAL = 300.0    # s between two sealing passes (the beat schedule, workers/migrations)
SCRUB_INTERVAL = 600.0   # s between two scrub passes
SEALS_PER_PASS = 200     # days sealed at most per pass (a pass must end before the next is due)


@dataclass
class SealReport:
    sealed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # coverage said complete, the rows say otherwise
    dropped: list[str] = field(default_factory=list)  # partitions or days left to the lake alone


@dataclass
class ScrubReport:
    verified: int = 0
    damaged: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    hot_checked: int = 0
    hot_changed: list[str] = field(default_factory=list)


# --- sealing ------------------------------------------------------------------------------------------


def due_days(today: date | None = None, limit: int = SEALS_PER_PASS) -> list[DayCoverage]:
    """Closed days proven complete whose manifest is missing or does not match the coverage record."""
    today = today or utc_today()
    matching = SealedDay.objects.filter(
        market=SPOT, symbol=OuterRef("symbol"), channel=OuterRef("channel"), day=OuterRef("day"), complete=True,
        state=SealedDay.State.SEALED, rows=OuterRef("trades"), first_id=OuterRef("first_id"),
        last_id=OuterRef("last_id"))
    return list(DayCoverage.objects.filter(verdict=Verdict.COMPLETE, dirty=False, day__lt=today)
                .exclude(Exists(matching)).order_by("day", "symbol", "channel")[:limit])


def seal_due(today: date | None = None, limit: int = SEALS_PER_PASS) -> SealReport:
    report = SealReport()
    for row in due_days(today, limit):
        key = DayKey(SPOT, row.symbol, row.channel, row.day)
        if seal_day(key, complete=True) is None:
            report.refused.append(str(key))
            mark_days(row.symbol, row.channel, [row.day])  # computed again from what is there now
        else:
            report.sealed.append(str(key))
    if report.sealed:
        logger.info("sealed %d days into the lake: %s%s", len(report.sealed), ", ".join(report.sealed[:5]),
                    " ..." if len(report.sealed) > 5 else "")
    return report


def seal_day(key: DayKey, *, complete: bool) -> SealedDay | None:
    """Write the day (the union of the lake's file and the database's rows) into the lake and record it.
    None when `complete` was claimed and the rows have a hole: nothing is written."""
    existing = tiers.sealed_day(key)
    table = database_day(key)
    if existing is not None and exists(tiers.lake(), key):
        table = union(table, read_day(tiers.lake(), key))
    if table.num_rows == 0 and existing is None:
        table = FILE_SCHEMA.empty_table()
    if complete and not consecutive(table):
        logger.error("%s: not sealed: the completeness report says complete, but its %d rows have a hole",
                     key, table.num_rows)
        return None
    source = SealedDay.Source.DATABASE if existing is None else SealedDay.Source.MERGED
    return record(key, write_day(tiers.lake(), key, table, {"source": source}), source=source, complete=complete)


def record(key: DayKey, day_file: DayFile, *, source: str, complete: bool) -> SealedDay:
    """The manifest of a day file just put in place."""
    now = timezone.now()
    sealed, _ = SealedDay.objects.update_or_create(
        market=key.market, symbol=key.symbol, channel=key.channel, day=key.day,
        defaults={"rows": day_file.rows, "first_id": day_file.first_id, "last_id": day_file.last_id,
                  "sha256": day_file.sha256, "bytes": day_file.bytes, "source": source, "complete": complete,
                  "state": SealedDay.State.SEALED, "problem": "", "sealed_at": now, "verified_at": now})
    return sealed


def confirm_complete(symbol: str, channel: str, days: list[date]) -> int:
    """Lake days written straight from the archive that the completeness report now proves complete, and
    that the database adds nothing to: their file is checked for consecutive ids and their manifest says
    complete, without writing the file again. Returns how many were confirmed."""
    confirmed = 0
    rows = {row.day: row for row in DayCoverage.objects.filter(symbol=symbol, channel=channel, day__in=days,
                                                                 verdict=Verdict.COMPLETE, dirty=False)}
    for sealed in SealedDay.objects.filter(market=SPOT, symbol=symbol, channel=channel, day__in=list(rows),
                                           complete=False, state=SealedDay.State.SEALED):
        row = rows[sealed.day]
        if (sealed.rows, sealed.first_id, sealed.last_id) != (row.trades, row.first_id, row.last_id):
            continue  # the database holds more of the day: sealed again from both by `seal_due`
        key = DayKey(SPOT, symbol, channel, sealed.day)
        expected = DayFile(sealed.rows, sealed.first_id, sealed.last_id, sealed.sha256, sealed.bytes)
        if not verify_day(tiers.lake(), key, expected, complete=True):
            SealedDay.objects.filter(pk=sealed.pk).update(complete=True, verified_at=timezone.now())
            confirmed += 1
    return confirmed


# --- the hot window ----------------------------------------------------------------------------------


def cold_before(today: date | None = None) -> date | None:
    """Days before this one are outside the hot window (None: DATASET_HOT_DAYS=all keeps everything)."""
    hot = settings.DATASET_HOT_DAYS
    return None if hot is None else (today or utc_today()) - timedelta(days=hot - 1)


def drop_cold(today: date | None = None) -> SealReport:
    """Leave to the lake alone what is older than the hot window and sealed complete."""
    report = SealReport()
    cutoff = cold_before(today)
    if cutoff is None:
        return report
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            months = sorted(m for m in partitions.existing(cursor) if m.end.date() <= cutoff)
        for month in months:
            if _month_sealed(month):
                with connection.cursor() as cursor:
                    partitions.detach_and_drop(cursor, month)
                report.dropped.append(month.name)
        return report
    for row in DayCoverage.objects.filter(day__lt=cutoff, verdict=Verdict.COMPLETE, dirty=False):
        key = DayKey(SPOT, row.symbol, row.channel, row.day)
        sealed = tiers.sealed_day(key)
        if sealed is None or not sealed.complete or sealed.rows != row.trades:
            continue
        start, end = tiers.day_bounds(row.day)
        deleted, _ = PriceUpdate.objects.filter(ticker_symbol=row.symbol, channel=row.channel, trade_time__gte=start,
                                                trade_time__lt=end).delete()
        if deleted:
            report.dropped.append(str(key))
    return report


def _month_sealed(month: partitions.Month) -> bool:
    """Whether every row of the month's partition is in the lake, in days sealed complete."""
    first, last = month.start.date(), month.end.date() - timedelta(days=1)
    with connection.cursor() as cursor:
        for instrument in Instrument.objects.all():
            cursor.execute(f"SELECT count(*) FROM {month.name} WHERE instrument_id = %s",  # noqa: S608 - our name
                           [instrument.id])
            stored = int(cursor.fetchone()[0])
            if stored == 0:
                continue
            days = DayCoverage.objects.filter(symbol=instrument.symbol, channel=instrument.channel, day__gte=first,
                                              day__lte=last)
            if days.exclude(verdict=Verdict.COMPLETE).exists() or days.filter(dirty=True).exists():
                return False
            sealed = SealedDay.objects.filter(market=SPOT, symbol=instrument.symbol, channel=instrument.channel,
                                              day__gte=first, day__lte=last, complete=True,
                                              state=SealedDay.State.SEALED)
            in_lake = sealed.aggregate(rows=Sum("rows"))["rows"] or 0
            if in_lake < stored or sealed.count() < days.filter(trades__gt=0).count():
                return False
    return True


def where(row: DayCoverage, sealed: SealedDay | None, months_stored: set[partitions.Month] | None,
          cutoff: date | None) -> str:
    """`database`, `lake` or `both`: where a day's trades are (for the coverage report)."""
    if sealed is None:
        return "database"
    if months_stored is not None:  # PostgreSQL: a month's rows stay until its partition is dropped
        in_database = partitions.Month(row.day.year, row.day.month) in months_stored
    else:
        in_database = cutoff is None or row.day >= cutoff
    return "both" if in_database and row.trades else "lake"


def coverage_entries(rows: list[DayCoverage]) -> list[dict[str, Any]]:
    """The days of the coverage report with where each lives and its seal (the command's and the API's)."""
    seals = seals_of(rows)
    months, cutoff = stored_months(), cold_before()
    entries = []
    for row in rows:
        sealed = seals.get((row.symbol, row.channel, row.day))
        entries.append(day_entry(row, sealed, where(row, sealed, months, cutoff)))
    return entries


def stored_months() -> set[partitions.Month] | None:
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        return partitions.existing(cursor)


# --- what the metrics and the status page read -----------------------------------------------------


def dataset_facts(today: date | None = None) -> dict[str, Any]:
    """Completeness and seals per stream, computed by the periodic passes (a few aggregates) and kept in Redis
    for the metrics and /status/, so that a scrape never scans the coverage table."""
    today = today or utc_today()
    streams: dict[str, dict[str, int]] = {}

    def entry(symbol: str, channel: str) -> dict[str, int]:
        return streams.setdefault(str(stream_id(symbol, channel)), {"incomplete": 0, "damaged": 0})

    closed = DayCoverage.objects.filter(day__lt=today)
    for symbol, channel, count in closed.exclude(verdict=Verdict.COMPLETE).values_list(
            "symbol", "channel").annotate(n=Count("id")).values_list("symbol", "channel", "n"):
        entry(symbol, channel)["incomplete"] = count
    for symbol, channel, verdict in closed.filter(day=today - timedelta(days=1)).values_list(
            "symbol", "channel", "verdict"):
        entry(symbol, channel)["yesterday_complete"] = int(verdict == Verdict.COMPLETE)
    for symbol, channel, count in SealedDay.objects.filter(state=SealedDay.State.DAMAGED).values_list(
            "symbol", "channel").annotate(n=Count("id")).values_list("symbol", "channel", "n"):
        entry(symbol, channel)["damaged"] = count
    totals = SealedDay.objects.aggregate(days=Count("id"), bytes=Sum("bytes"))
    damaged = list(SealedDay.objects.filter(state=SealedDay.State.DAMAGED).order_by("day").values_list(
        "symbol", "channel", "day", "problem")[:20])
    return {"computed_at": timezone.now().timestamp(), "streams": streams, "sealed_days": totals["days"] or 0,
            "lake_bytes": totals["bytes"] or 0,
            "damaged": [{"stream": str(stream_id(s, c)), "day": d.isoformat(), "problem": why}
                        for s, c, d, why in damaged]}


def publish_facts(today: date | None = None) -> dict[str, Any]:
    facts = dataset_facts(today)
    sync_redis().set(DATASET_FACTS, orjson.dumps(facts))
    return facts


def read_facts() -> dict[str, Any] | None:
    raw = sync_redis().get(DATASET_FACTS)
    return None if raw is None else dict(orjson.loads(raw))


# --- the scrub ---------------------------------------------------------------------------------------


def scrub(now: datetime | None = None, interval: float = SCRUB_INTERVAL) -> ScrubReport:
    """One pass: the sealed days and hot days verified longest ago, as many as keeps every one of them
    verified within DATASET_SCRUB_DAYS when a pass runs every `interval` seconds."""
    now = now or timezone.now()
    report = ScrubReport()
    passes = max(1.0, settings.DATASET_SCRUB_DAYS * 86_400 / interval)
    total = SealedDay.objects.count()
    for sealed in SealedDay.objects.order_by("verified_at")[:math.ceil(total / passes)]:
        verify_sealed(sealed, report, now)
    report.hot_checked, report.hot_changed = _scrub_hot(now, passes)
    if report.damaged or report.hot_changed:
        logger.error("scrub: %d sealed files damaged (%s), %d hot days changed (%s)", len(report.damaged),
                     ", ".join(report.damaged[:5]), len(report.hot_changed), ", ".join(report.hot_changed[:5]))
    return report


def verify_sealed(sealed: SealedDay, report: ScrubReport, now: datetime | None = None) -> bool:
    """Check one sealed file against its manifest; a damaged one is marked and, where the database still
    holds its day, rebuilt from there. Returns whether the file is right (now)."""
    key = DayKey(sealed.market, sealed.symbol, sealed.channel, sealed.day)
    expected = DayFile(sealed.rows, sealed.first_id, sealed.last_id, sealed.sha256, sealed.bytes)
    problems = verify_day(tiers.lake(), key, expected, complete=sealed.complete)
    report.verified += 1
    if not problems:
        SealedDay.objects.filter(pk=sealed.pk).update(verified_at=now or timezone.now(), state=SealedDay.State.SEALED,
                                                      problem="")
        return True
    problem = "; ".join(problems)
    logger.error("%s: sealed file damaged: %s", key, problem)
    SealedDay.objects.filter(pk=sealed.pk).update(state=SealedDay.State.DAMAGED, problem=problem,
                                                  verified_at=now or timezone.now())
    report.damaged.append(str(key))
    if rebuild(key, sealed):
        report.rebuilt.append(str(key))
        return True
    return False


def rebuild(key: DayKey, sealed: SealedDay) -> bool:
    """A damaged day written again from the database, when it still holds all of the day's rows."""
    table = database_day(key)
    if table.num_rows != sealed.rows or (sealed.complete and not consecutive(table)):
        logger.error("%s: the database holds %d of its %d rows; rebuild it from the archive "
                     "(import_archive %s --from %s --to %s --force)", key, table.num_rows, sealed.rows, key.symbol,
                     key.day, key.day)
        return False
    record(key, write_day(tiers.lake(), key, table, {"source": SealedDay.Source.DATABASE}),
           source=SealedDay.Source.DATABASE, complete=sealed.complete)
    logger.warning("%s: rebuilt from the database", key)
    return True


def _scrub_hot(now: datetime, passes: float) -> tuple[int, list[str]]:
    """Hot days proven complete, checked against the table: count and first/last id (one aggregate each). A day
    that changed (rows deleted from the database) is computed again: its holes go to the audit, unless the lake
    holds the day whole."""
    cutoff = cold_before(now.date()) or date.min
    days = DayCoverage.objects.filter(day__gte=cutoff, day__lt=now.date(), verdict=Verdict.COMPLETE, dirty=False)
    changed = []
    count = 0
    for row in days.order_by("checked_at")[:math.ceil(days.count() / passes)]:
        count += 1
        start, end = tiers.day_bounds(row.day)
        span = queries.time_span(row.symbol, row.channel, start, end)
        if (span.trades, span.first_id, span.last_id) != (row.trades, row.first_id, row.last_id):
            changed.append(f"{row.symbol} {row.channel} {row.day}")
            mark_days(row.symbol, row.channel, [row.day])
        else:
            DayCoverage.objects.filter(pk=row.pk).update(checked_at=now)
    return count, changed
