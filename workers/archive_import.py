"""Importing Binance's public trade archive: each file read and checked whole, then stored completely or not at
all; closed days older than the hot window straight into the lake, the others into the database.

For each symbol and dataset (trades, aggTrades), the files that cover the days asked are taken in order
(streams.archive.plan_periods: monthly files for whole months, daily ones for the rest). A file's CHECKSUM
is read first: a file not published (404) is reported and its days filled from REST afterwards
(workers.archive_fill); a file imported before with the same checksum is skipped (the `ArchiveFile` marker:
an import resumes where it stopped and a second one adds nothing), unless `force`. The zip is downloaded
within bounds (workers.archive_download) while its SHA-256 is computed, and read only if it matches.

Its rows are then read and checked whole (streams.archive_rows: the expected member only, caps on size,
ratio and line length, the CRC, the format, every time inside the file's period, ids strictly increasing),
one UTC day at a time, and staged: a cold day is written as a lake file under a temporary name, a hot day
is spooled to disk. Nothing is committed before the last row of the file was read and its CRC checked.
Then, in one database transaction, the hot days are stored and the manifests, the file's marker and each
day's archive count recorded; the staged lake files are put in place after it commits. A file that breaks
a rule is refused with the reason and nothing of it is kept.

What is stored already wins where it agrees with the file (a live trade keeps its receive time); where a
re-published file differs from what is stored (another price, size, time or side for an id), the file wins,
and the difference is reported and counted (`repaired`).
"""

from __future__ import annotations

import logging
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc
from django.conf import settings
from django.db import transaction

from streams import queries, tiers
from streams.archive import TRADES, ArchiveFormatError, Dataset, FileRef, Period, parse_checksum, plan_periods
from streams.archive_rows import Limits, open_member, read_days
from streams.binance.errors import RestError, UnknownSymbol
from streams.binance.protocol import TRADE
from streams.binance.sequence import Gap
from streams.dataset import database_day, differing_ids, union, without
from streams.lake.files import LakeError, Staged, discard, exists, place, read_day, stage_day
from streams.lake.layout import DayKey
from streams.lake.schema import FILE_SCHEMA, trades_from_table
from streams.models import PriceUpdate, SealedDay
from workers.archive_download import Bounds, Downloader, DownloadRefused
from workers.models import ArchiveFile, DayCoverage
from workers.store import ARCHIVE_IMPORT, store_or_dead_letter

logger = logging.getLogger(__name__)

SPOT = "spot"
# What makes a file unreadable as the archive's, each a refusal of that file only (the run goes on).
_REFUSED = (ArchiveFormatError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, DownloadRefused,
            LakeError)


class ChecksumMismatch(Exception):
    """The file's SHA-256 is not the one its CHECKSUM file gives: nothing of it is stored."""


@dataclass
class Progress:
    """What an import has done so far (read by the command's progress bar)."""

    files_total: int = 0
    files_done: int = 0
    trades_read: int = 0
    inserted: int = 0
    current: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.trades_read / elapsed if elapsed > 0 else 0.0


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # imported before, same checksum
    missing: list[str] = field(default_factory=list)  # not published (404)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): nothing of it was stored
    trades_read: int = 0
    inserted: int = 0    # trades the dataset did not hold (either tier)
    repaired: int = 0    # trades stored with other values than the file's, corrected to the file's
    lake_days: int = 0   # days written straight into the lake
    rest_filled: int = 0
    missing_days: list[tuple[str, date]] = field(default_factory=list)  # (symbol, day) to fill from REST
    days: set[tuple[str, str, date]] = field(default_factory=set)  # (symbol, channel, day) whose data changed
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        return self.trades_read - self.inserted


OnProgress = Callable[[Progress], None]


@dataclass
class _Day:
    """What a file holds for one UTC day."""

    count: int
    first_id: int | None
    last_id: int | None


@dataclass
class _Staging:
    """A file's days, staged: lake files under temporary names, hot days spooled to disk (a monthly file's hot
    days can be tens of millions of trades); dropped unless committed."""

    lake: list[tuple[Staged, str, int]] = field(default_factory=list)  # (staged file, source, trades added)
    days: dict[date, _Day] = field(default_factory=dict)
    sha256: str = ""
    repaired: int = 0
    lake_days: int = 0
    _hot: list[tuple[date, int, int]] = field(default_factory=list)  # (day, first batch, batches) in the spool
    _spool: IO[bytes] | None = None
    _writer: pa.ipc.RecordBatchFileWriter | None = None

    def keep_hot(self, day: date, table: pa.Table) -> None:
        if self._writer is None:
            self._spool = tempfile.TemporaryFile(prefix="archive-hot-")  # noqa: SIM115 - closed by close()
            self._writer = pa.ipc.new_file(self._spool, FILE_SCHEMA)
        batches = table.to_batches()
        first = self._hot[-1][1] + self._hot[-1][2] if self._hot else 0
        self._hot.append((day, first, len(batches)))
        for batch in batches:
            self._writer.write_batch(batch)

    def hot_days(self) -> Iterator[tuple[date, pa.Table]]:
        """The spooled days, one at a time."""
        if self._writer is None or self._spool is None:
            return
        self._writer.close()
        self._writer = None
        self._spool.seek(0)
        reader = pa.ipc.open_file(self._spool)  # type: ignore[arg-type]  # a binary file object, as pyarrow reads
        for day, first, count in self._hot:
            batches = [reader.get_batch(index) for index in range(first, first + count)]
            yield day, pa.Table.from_batches(batches, schema=FILE_SCHEMA)

    def close(self) -> None:
        for staged, _, _ in self.lake:
            discard(staged)
        if self._spool is not None:
            self._spool.close()


class ArchiveImporter:
    """Imports files of the archive at `base_url`; see the module's docstring."""

    def __init__(self, base_url: str | None = None, *, on_progress: OnProgress | None = None, force: bool = False,
                 limits: Limits | None = None, bounds: Bounds | None = None, cold_before: date | None = None) -> None:
        self.base_url = (base_url or settings.BINANCE_ARCHIVE_URL).rstrip("/")
        self.on_progress = on_progress or (lambda progress: None)
        self.force = force  # import files again even when the marker says they were
        self.limits = limits or Limits(max_member_bytes=settings.ARCHIVE_MAX_MEMBER_BYTES,
                                       max_ratio=settings.ARCHIVE_MAX_RATIO)
        self.cold_before = cold_before
        self.progress = Progress()
        self.report = ImportReport()
        self._downloads = Downloader(bounds or Bounds(max_bytes=settings.ARCHIVE_MAX_ZIP_BYTES,
                                                      deadline=settings.ARCHIVE_DOWNLOAD_DEADLINE,
                                                      min_rate=settings.ARCHIVE_MIN_BYTES_PER_SECOND))

    def close(self) -> None:
        self._downloads.close()

    def __enter__(self) -> ArchiveImporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def import_periods(self, symbol: str, periods: Iterable[Period], dataset: Dataset = TRADES) -> ImportReport:
        """Import `periods` of `symbol` in order; a monthly file not published falls back to daily files."""
        pending = list(periods)
        self.progress.files_total += len(pending)
        while pending:
            ref = FileRef(symbol, dataset, pending.pop(0))
            self.progress.current = ref.name
            self.on_progress(self.progress)
            outcome = self._import_file(ref)
            if outcome == "missing" and ref.period.monthly:
                logger.info("%s: not published (yet); taking the month's daily files", ref.name)
                daily = ref.period.daily()
                pending[:0] = daily
                self.progress.files_total += len(daily) - 1
                continue
            if outcome == "missing":
                self.report.missing.append(ref.name)
                if dataset is TRADES:
                    self.report.missing_days += [(symbol, day) for day in ref.period.days()]
            self.progress.files_done += 1
            self.on_progress(self.progress)
        return self.report

    def _import_file(self, ref: FileRef) -> str:
        """"imported", "skipped", "missing" or "failed"."""
        staging = _Staging()
        try:
            outcome = self._fetch_and_stage(ref, staging)
            if outcome != "staged":
                return outcome
            added = self._commit(ref, staging)
        except ChecksumMismatch as exc:
            return self._refuse(ref, str(exc))
        except _REFUSED as exc:
            return self._refuse(ref, _reason(exc))
        except RuntimeError as exc:  # zipfile: "File ... is encrypted, password required for extraction"
            if "encrypted" not in str(exc):
                raise
            return self._refuse(ref, f"{ref.member} is encrypted")
        finally:
            staging.close()
        self.report.imported.append(ref.name)
        logger.info("%s: %d trades, %d new%s%s", ref.name, sum(d.count for d in staging.days.values()), added,
                    f", {staging.repaired} corrected to the file's values" if staging.repaired else "",
                    f", {staging.lake_days} days into the lake" if staging.lake_days else "")
        return "imported"

    def _fetch_and_stage(self, ref: FileRef, staging: _Staging) -> str:
        """"staged" (the file read and checked whole), or "skipped" or "missing"."""
        url = ref.url(self.base_url)
        checksum_text = self._downloads.text(url + ".CHECKSUM")
        if checksum_text is None:
            logger.warning("%s: not published (yet)", ref.name)
            return "missing"
        staging.sha256 = parse_checksum(checksum_text, ref.name)
        marker = ArchiveFile.objects.filter(symbol=ref.symbol, name=ref.name).first()
        if marker is not None and marker.sha256 == staging.sha256 and not self.force:
            self.report.skipped.append(ref.name)
            return "skipped"
        if marker is not None and marker.sha256 != staging.sha256:
            logger.warning("%s: re-published (checksum %s, imported %s): importing it again", ref.name,
                           staging.sha256[:12], marker.sha256[:12])
        with tempfile.TemporaryFile(prefix="archive-") as spool:
            if not self._download_verified(url, ref.name, staging.sha256, spool):
                return "missing"
            self._stage(ref, spool, staging)
        return "staged"

    def _refuse(self, ref: FileRef, reason: str) -> str:
        logger.error("%s: refused, nothing of it stored: %s", ref.name, reason)
        self.report.failed.append((ref.name, reason))
        return "failed"

    def _download_verified(self, url: str, name: str, expected: str, spool: IO[bytes]) -> bool:
        """Download into `spool`; a mismatch is tried once more (a broken transfer), then refused. False when
        the file is not there (404)."""
        for attempt in (1, 2):
            digest = self._downloads.file(url, spool)
            if digest is None:
                return False
            if digest == expected:
                spool.seek(0)
                return True
            if attempt == 2:
                raise ChecksumMismatch(f"checksum mismatch: its CHECKSUM says {expected}, the file hashes to "
                                       f"{digest}; nothing of it was stored")
            logger.warning("%s: checksum mismatch; downloading it again", name)
        return False

    # --- staging: the whole file read and checked, nothing committed -----------------------------------

    def _stage(self, ref: FileRef, spool: IO[bytes], staging: _Staging) -> None:
        channel = ref.dataset.channel
        with zipfile.ZipFile(spool) as archive, open_member(archive, ref, self.limits) as member:
            for day, table in read_days(member, ref, self.limits):
                first, last = (table.column("trade_id")[0].as_py(), table.column("trade_id")[-1].as_py())
                staging.days[day] = _Day(table.num_rows, first, last)
                self.progress.trades_read += table.num_rows
                self.report.trades_read += table.num_rows
                if self.cold_before is not None and day < self.cold_before:
                    self._stage_lake_day(DayKey(SPOT, ref.symbol, channel, day), table, staging)
                else:
                    staging.keep_hot(day, table)
                self.on_progress(self.progress)

    def _stage_lake_day(self, key: DayKey, table: pa.Table, staging: _Staging) -> None:
        sealed = tiers.sealed_day(key)
        start, end = tiers.day_bounds(key.day)
        in_database = queries.time_span(key.symbol, key.channel, start, end).trades if key.market == SPOT else 0
        source, added = SealedDay.Source.ARCHIVE, table.num_rows
        if sealed is not None or in_database:
            held = database_day(key)
            if sealed is not None and exists(tiers.lake(), key):
                held = union(held, read_day(tiers.lake(), key))
            changed = differing_ids(table, held)
            staging.repaired += _reported(key, len(changed))
            merged = union(without(held, changed), table)
            added = merged.num_rows - held.num_rows
            table, source = merged, SealedDay.Source.MERGED
        staging.lake.append((stage_day(tiers.lake(), key, table, {"source": source}), source, added))

    # --- committing: one transaction, then the lake's files put in place ------------------------------

    def _commit(self, ref: FileRef, staging: _Staging) -> int:
        channel = ref.dataset.channel
        added = sum(count for _, _, count in staging.lake)
        with transaction.atomic():
            for day, table in staging.hot_days():
                new, repaired = store_hot_day(DayKey(SPOT, ref.symbol, channel, day), table)
                added += new
                staging.repaired += repaired
            for staged, source, _ in staging.lake:
                day_file = staged.day_file
                SealedDay.objects.update_or_create(
                    market=SPOT, symbol=ref.symbol, channel=channel, day=staged.key.day,
                    defaults={"rows": day_file.rows, "first_id": day_file.first_id, "last_id": day_file.last_id,
                              "sha256": day_file.sha256, "bytes": day_file.bytes, "source": source,
                              "complete": False, "state": SealedDay.State.SEALED, "problem": "",
                              "sealed_at": datetime.now(UTC), "verified_at": datetime.now(UTC)})
                self.report.lake_days += 1
            self._record(ref, staging, added)
        for staged, _, _ in staging.lake:
            place(tiers.lake(), staged)
        staging.lake_days = len(staging.lake)
        staging.lake.clear()
        self.report.inserted += added
        self.report.repaired += staging.repaired
        self.progress.inserted += added
        return added

    def _record(self, ref: FileRef, staging: _Staging, added: int) -> None:
        """The file's marker, and what each of its days held (the archive's count for the report)."""
        channel = ref.dataset.channel
        firsts = [d.first_id for d in staging.days.values() if d.first_id is not None]
        lasts = [d.last_id for d in staging.days.values() if d.last_id is not None]
        trades = sum(d.count for d in staging.days.values())
        ArchiveFile.objects.update_or_create(symbol=ref.symbol, name=ref.name, defaults={
            "sha256": staging.sha256, "trades": trades, "inserted": added,
            "first_id": min(firsts, default=None), "last_id": max(lasts, default=None)})
        rows = {row.day: row for row in DayCoverage.objects.select_for_update().filter(
            symbol=ref.symbol, channel=channel, day__in=list(staging.days))}
        for day, held in staging.days.items():
            row = rows.setdefault(day, DayCoverage(symbol=ref.symbol, channel=channel, day=day))
            row.archive_count, row.archive_first_id, row.archive_last_id = held.count, held.first_id, held.last_id
            row.dirty = True
            self.report.days.add((ref.symbol, channel, day))
        DayCoverage.objects.bulk_update([r for r in rows.values() if r.pk is not None],
                                        ["archive_count", "archive_first_id", "archive_last_id", "dirty"])
        DayCoverage.objects.bulk_create([r for r in rows.values() if r.pk is None], ignore_conflicts=True)


def store_hot_day(key: DayKey, table: pa.Table) -> tuple[int, int]:
    """One day of a file into the database, inside the file's transaction: what is stored and differs from the
    file corrected to the file's values, the rest added. Returns (trades added, trades corrected); a trade the
    database refuses refuses the whole file (ArchiveFormatError), dead-lettered under the import's name."""
    stored = database_day(key)
    changed = differing_ids(table, stored)
    if len(changed):
        _reported(key, len(changed))
        PriceUpdate.objects.filter(ticker_symbol=key.symbol, channel=key.channel,
                                   trade_id__in=[i for i in changed.to_pylist() if i is not None]).delete()
    fresh = without(table, stored.column("trade_id").combine_chunks()) if stored.num_rows else table
    wanted = union(fresh, table.filter(pc.is_in(table.column("trade_id"), value_set=changed))) if len(
        changed) else fresh
    result = store_or_dead_letter(trades_from_table(wanted, key.symbol, key.channel), ARCHIVE_IMPORT)
    if result.refused:
        first = result.refused[0]
        raise ArchiveFormatError(f"the database refused {len(result.refused)} trades, first "
                                 f"{first.trade.trade_id}: {first.reason}")
    return result.inserted - len(changed), len(changed)


def _reported(key: DayKey, changed: int) -> int:
    if changed:
        logger.warning("%s: %d stored trades differ from the archive's file; corrected to the file's values",
                       key, changed)
    return changed


def _reason(exc: BaseException) -> str:
    if isinstance(exc, zlib.error | EOFError):
        return f"the zip is truncated or damaged ({exc})"
    if isinstance(exc, NotImplementedError):
        return f"the zip uses a compression this importer does not read ({exc})"
    if isinstance(exc, zipfile.BadZipFile):
        return f"not a readable zip: {exc}"
    return str(exc)


# --- what the audit and the command use ----------------------------------------------------------


def import_range(symbols: Iterable[str], first: date, last: date, *, daily_only: bool = False,
                 on_progress: OnProgress | None = None, fill_from_rest: bool = True, force: bool = False,
                 datasets: Iterable[Dataset] = (TRADES,)) -> ImportReport:
    """Import the days `first`..`last` of each symbol and dataset, fill what the archive lacks from REST
    (trades), then verify the stored range (the audit's watermark) and bring the completeness report up to
    date. Closed days older than the hot window go straight into the lake."""
    from workers.coverage import mark_days, update_coverage
    from workers.seal import cold_before, confirm_complete
    from workers.watermark import lower_watermark, verify_stored

    started = time.monotonic()
    today = datetime.now(UTC).date()
    with ArchiveImporter(on_progress=on_progress, force=force, cold_before=cold_before(today)) as importer:
        for symbol in symbols:
            for dataset in datasets:
                channel = dataset.channel
                below = queries.first_id(symbol, channel)
                periods = plan_periods(first, last, today)
                if daily_only:
                    periods = [day for period in periods for day in period.daily()]
                importer.import_periods(symbol, periods, dataset)
                report = importer.report
                if fill_from_rest and dataset is TRADES:
                    report.rest_filled += _fill(symbol, [d for s, d in report.missing_days if s == symbol], report)
                lowest = queries.first_id(symbol, channel)
                if below is not None and lowest is not None and lowest < below:
                    lower_watermark(symbol, channel, lowest - 1)  # trades stored under the verified range
                verify_stored(symbol, channel)
                days = [d for s, c, d in report.days if (s, c) == (symbol, channel)]
                mark_days(symbol, channel, days)
                update_coverage(symbol, channel)
                confirm_complete(symbol, channel, days)
        importer.report.seconds = time.monotonic() - started
        return importer.report


def _fill(symbol: str, days: list[date], report: ImportReport) -> int:
    """Days the archive lacks, from REST; an exchange that does not know the symbol is said so, with its name."""
    from workers.archive_fill import fill_missing_days

    try:
        return fill_missing_days(symbol, days, report)
    except RestError as exc:
        if exc.status != 400:
            raise
        raise UnknownSymbol(symbol, f"the archive has no file of {len(days)} of the days asked, and the exchange "
                                    f"cannot fill them ({exc})") from exc


def import_days(symbol: str, days: Iterable[date]) -> int:
    """Import the daily files of `days` again, whatever the markers say (the audit healing wide holes);
    returns the trades added. Files not published are left to REST."""
    from workers.seal import cold_before

    with ArchiveImporter(force=True, cold_before=cold_before()) as importer:
        importer.import_periods(symbol, [Period(day, monthly=False) for day in days])
        return importer.report.inserted


def days_of_gap(symbol: str, gap: Gap, published_before: date | None = None) -> list[date]:
    """The UTC days a hole between two stored trades may fall on, those whose daily files are out."""
    before = queries.trade_time_of(symbol, TRADE, gap.first - 1)
    after = queries.trade_time_of(symbol, TRADE, gap.last + 1)
    if before is None or after is None:
        return []
    limit = published_before or datetime.now(UTC).date()
    days, day = [], before.astimezone(UTC).date()
    while day <= after.astimezone(UTC).date() and day < limit:
        days.append(day)
        day += timedelta(days=1)
    return days
