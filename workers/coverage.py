"""Completeness per symbol, channel and UTC day (docs/dataset.md, "Completeness per day").

For each day: the trades stored, the first and last id, the holes (id ranges) inside the day and at its
edges, and what the archive's file said the day holds when it was imported. Ids are consecutive per
stream, so a day is proven complete when it is over, its stored ids are consecutive (one count against
last - first + 1), its first id follows the last one stored before it (or is the archive's first id of the
day), and the next stored id follows its last one (or its last is the archive's last of the day). A hole at
an edge is shown on both days it touches, unless the archive's first or last id of one of them proves it
belongs to the other.

Verdicts: `complete`; `holes` (listed); `unchecked`: the day is not over, or an edge cannot be established
yet (the newest stored day before a later trade is stored, or the first day of a stream that began live:
import that day from the archive to complete it).

Kept up to date incrementally (`update_coverage`, after each audit pass and each import): only the days
not final yet (not complete, or marked dirty by an import or `coverage --recheck`) are computed again,
each from one aggregate over that day's rows and two index lookups; complete days are never scanned again.
A hole found under the audit's verified watermark (`AuditMark`: rows deleted since it passed, an import
under it) sends the watermark back to just before the hole, so that the audit's next pass fills it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from streams import queries, tiers
from streams.binance.sequence import Gap
from streams.lake.layout import DayKey
from streams.models import SealedDay
from workers.models import DayCoverage, Verdict
from workers.watermark import lower_watermark, watermark

logger = logging.getLogger(__name__)

CALENDAR_DAYS = 35  # days the status page shows
_LOCK_SPACE = 0x636F76  # pg_advisory_xact_lock's first key: "cov", the coverage computations
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
SPOT = "spot"  # the only market the database holds until it has a market column


def utc_today() -> date:
    return datetime.now(UTC).date()


def update_coverage(symbol: str, channel: str, today: date | None = None) -> int:
    """Compute every day of the stream that is not final yet, from its first stored or imported day to
    today; returns how many days were computed. One computation per stream at a time (the audit, an import
    and `coverage` may ask at once: each made the same new rows, and all but one died on the unique key)."""
    with _stream_lock(symbol, channel):
        return _update(symbol, channel, today or utc_today())


@contextlib.contextmanager
def _stream_lock(symbol: str, channel: str) -> Iterator[None]:
    """PostgreSQL: a transaction-scoped advisory lock per stream (other processes too). SQLite, the embedded
    single-host default: a lock per process (its writes are serialised by the database anyway)."""
    if connection.vendor != "postgresql":
        with _LOCKS.setdefault((symbol, channel), threading.Lock()):
            yield
        return
    key = zlib.crc32(f"{symbol}@{channel}".encode()) - (1 << 31)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_SPACE, key])
        yield


def _update(symbol: str, channel: str, today: date) -> int:
    rows = {row.day: row for row in DayCoverage.objects.filter(symbol=symbol, channel=channel)}
    ends = [*rows, *(_day_of(symbol, channel, queries.first_id), _day_of(symbol, channel, queries.last_id))]
    days = [d for d in ends if d is not None]
    if not days:
        return 0
    mark = watermark(symbol, channel)
    computed = 0
    for day in _days(min(days), min(max(days), today)):  # no rows for the days after the newest trade
        row = rows.get(day) or DayCoverage(symbol=symbol, channel=channel, day=day)
        if row.pk is not None and row.verdict == Verdict.COMPLETE and not row.dirty:
            continue
        mark = _compute(row, mark, today)
        row.save()
        computed += 1
    return computed


def mark_days(symbol: str, channel: str, days: Iterable[date]) -> None:
    """The stored rows of these days changed (an import) or are to be checked again: compute them anew."""
    days = sorted(set(days))
    rows = DayCoverage.objects.filter(symbol=symbol, channel=channel, day__in=days)
    rows.update(dirty=True)
    known = set(rows.values_list("day", flat=True))
    DayCoverage.objects.bulk_create([DayCoverage(symbol=symbol, channel=channel, day=d) for d in days
                                     if d not in known], ignore_conflicts=True)


@dataclass
class _Edges:
    holes: list[Gap]
    known: bool  # both edges established


def _compute(row: DayCoverage, mark: int | None, today: date) -> int | None:
    """Fill `row` from both tiers; returns the watermark (lowered if a hole lies under it in the database)."""
    symbol, channel = row.symbol, row.channel
    key = DayKey(SPOT, symbol, channel, row.day)
    span = tiers.day_span(key)
    row.trades, row.first_id, row.last_id = span.trades, span.first_id, span.last_id
    edges = _day_edges(row, key, span) if span.first_id is not None else _empty_day_edges(row, key)
    if edges.holes and mark is not None and edges.holes[0].first <= mark:
        lower_watermark(symbol, channel, edges.holes[0].first - 1)
        mark = edges.holes[0].first - 1
    row.holes = [[g.first, g.last] for g in edges.holes]
    if edges.holes:
        row.verdict = Verdict.HOLES
    elif row.day >= today or not edges.known:
        row.verdict = Verdict.UNCHECKED
    else:
        row.verdict = Verdict.COMPLETE
    row.dirty = False
    row.checked_at = timezone.now()
    return mark


def _day_edges(row: DayCoverage, key: DayKey, span: tiers.DaySpan) -> _Edges:
    first, last = span.first_id, span.last_id
    assert first is not None and last is not None
    found = list(span.holes)
    before = tiers.id_before(key, first)
    after = tiers.id_after(key, last)
    archive_first, archive_last = row.archive_first_id, row.archive_last_id
    # The start edge: the archive's first id of the day, else the last trade stored before the day.
    if archive_first is not None and archive_first >= first:
        start_known = True
    elif before is not None:
        start_known = True
        if before + 1 < first:
            found.insert(0, Gap(before + 1, first - 1))
    elif archive_first is not None:
        start_known = True
        found.insert(0, Gap(archive_first, first - 1))
    else:
        start_known = False
    # The end edge: the archive's last id of the day, else the next trade stored after it.
    if archive_last is not None and archive_last <= last:
        end_known = True
    elif after is not None:
        end_known = True
        if after > last + 1:
            found.append(Gap(last + 1, after - 1))
    elif archive_last is not None:
        end_known = True
        found.append(Gap(last + 1, archive_last))
    else:
        end_known = False
    return _Edges(found, start_known and end_known)


def _empty_day_edges(row: DayCoverage, key: DayKey) -> _Edges:
    """A day with nothing stored: complete only if the trades around it are consecutive (a quiet day)."""
    before = tiers.last_id_before_day(key)
    after = tiers.first_id_after_day(key)
    if before is not None and after is not None:
        return _Edges([Gap(before + 1, after - 1)] if after > before + 1 else [], True)
    if row.archive_first_id is not None and row.archive_last_id is not None:
        return _Edges([Gap(row.archive_first_id, row.archive_last_id)], True)
    return _Edges([], False)


def _day_of(symbol: str, channel: str, which: Callable[[str, str], int | None]) -> date | None:
    """The day of the first or last stored trade (two index lookups)."""
    trade_id = which(symbol, channel)
    moment = queries.trade_time_of(symbol, channel, trade_id) if trade_id is not None else None
    return moment.astimezone(UTC).date() if moment is not None else None


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


# --- reading it ----------------------------------------------------------------------------------


def day_entry(row: DayCoverage, sealed: SealedDay | None = None, where: str | None = None) -> dict[str, Any]:
    """One day in the JSON contract of /api/coverage/ and `coverage --json`: its completeness, where its trades
    are (`database`, `lake` or `both`), and its seal in the lake (null: not sealed)."""
    return {"symbol": row.symbol, "channel": row.channel, "day": row.day.isoformat(), "trades": row.trades,
            "first_id": row.first_id, "last_id": row.last_id, "holes": [list(h) for h in row.holes],
            "archive_count": row.archive_count, "verdict": row.verdict, "where": where,
            "seal": None if sealed is None else {
                "state": sealed.state, "complete": sealed.complete, "rows": sealed.rows, "sha256": sealed.sha256,
                "bytes": sealed.bytes, "source": sealed.source, "sealed_at": sealed.sealed_at.isoformat(),
                "verified_at": sealed.verified_at.isoformat(), "problem": sealed.problem or None}}


def seals_of(rows: list[DayCoverage]) -> dict[tuple[str, str, date], SealedDay]:
    """The manifests of the days of `rows` (one query per stream)."""
    found: dict[tuple[str, str, date], SealedDay] = {}
    for symbol, channel in {(r.symbol, r.channel) for r in rows}:
        days = [r.day for r in rows if (r.symbol, r.channel) == (symbol, channel)]
        for sealed in SealedDay.objects.filter(market=SPOT, symbol=symbol, channel=channel, day__gte=min(days),
                                               day__lte=max(days)):
            found[(symbol, channel, sealed.day)] = sealed
    return found


def coverage_rows(symbol: str | None = None, channel: str | None = None, first: date | None = None,
                  last: date | None = None) -> list[DayCoverage]:
    rows = DayCoverage.objects.all()
    if symbol:
        rows = rows.filter(symbol=symbol)
    if channel:
        rows = rows.filter(channel=channel)
    if first:
        rows = rows.filter(day__gte=first)
    if last:
        rows = rows.filter(day__lte=last)
    return list(rows.order_by("symbol", "channel", "day"))


def streams_covered(symbol: str | None = None) -> list[tuple[str, str]]:
    rows = DayCoverage.objects.filter(Q(symbol=symbol) if symbol else Q())
    return sorted(set(rows.values_list("symbol", "channel")))


def calendar(today: date | None = None, days: int = CALENDAR_DAYS) -> dict[str, Any]:
    """The status page's calendar: one line per stream, one cell per day of the last `days`."""
    today = today or utc_today()
    columns = [today - timedelta(days=n) for n in range(days - 1, -1, -1)]
    cells: dict[tuple[str, str], dict[date, DayCoverage]] = {}
    for row in coverage_rows(first=columns[0], last=today):
        cells.setdefault((row.symbol, row.channel), {})[row.day] = row
    lines = []
    for (symbol, channel), by_day in sorted(cells.items()):
        lines.append({"stream": f"{symbol} {channel}", "cells": [_cell(by_day.get(day), day) for day in columns]})
    return {"days": columns, "lines": lines}


def _cell(row: DayCoverage | None, day: date) -> dict[str, Any]:
    if row is None:
        return {"day": day, "verdict": "none", "title": f"{day}: nothing stored"}
    title = f"{day}: {row.verdict}, {row.trades} trades"
    if row.first_id is not None:
        title += f", ids {row.first_id}..{row.last_id}"
    if row.archive_count is not None:
        title += f", archive {row.archive_count}"
    if row.holes:
        shown = ", ".join(f"{a}..{b}" for a, b in row.holes[:10])
        title += f"; holes {shown}" + (f" and {len(row.holes) - 10} more" if len(row.holes) > 10 else "")
    return {"day": day, "verdict": row.verdict, "title": title}
