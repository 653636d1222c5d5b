"""Importing Binance's public trade archive (docs/dataset.md): files downloaded, verified, streamed into storage.

For each symbol, the files that cover the days asked (streams.archive.plan_periods: monthly files for
whole months, daily ones for the rest) are taken in order. Each file's `.CHECKSUM` is read first: a file
not published yet (404) is reported and its days are filled from REST afterwards (workers.archive_fill);
a file imported before with the same checksum is skipped (the `ArchiveFile` marker: resumable after
Ctrl-C, and a second import adds nothing); a re-published file (another checksum) is imported again.
The zip goes to a temporary file while its SHA-256 is computed, and only a file that matches its CHECKSUM
is read: its CSV member is streamed in chunks, parsed into trades (the file's exact decimal text) and
handed to a writer thread that stores each batch with `streams.storage.store_trades` (idempotent on the
trade's identity, so what the live stream stored already is skipped), while the next batch is parsed.
What each day of a file held (count, first and last id) is kept for the completeness report.

Only the archive's `trades` dataset is read (channel `trade`); its `aggTrades` files are another dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import IO

import httpx
from django.conf import settings
from django.db import connection

from streams import queries
from streams.archive import (
    ArchiveFormatError,
    DayTally,
    Period,
    csv_name,
    file_name,
    file_url,
    line_chunks,
    parse_checksum,
    plan_periods,
    tally_days,
    trades_from_lines,
)
from streams.binance.backoff import RETRY
from streams.binance.errors import ExchangeUnavailable, RestError, retry_delay
from streams.binance.protocol import TRADE, Trade
from streams.binance.sequence import Gap
from workers.models import ArchiveFile, DayCoverage
from workers.store import ARCHIVE_IMPORT, store_or_dead_letter

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 2 << 20  # CSV text parsed at a time: ~30,000 trades, one store_trades batch
_QUEUE_BATCHES = 2  # parsed batches waiting for the writer: memory stays a few batches whatever the file
_DOWNLOAD_BLOCK = 1 << 20


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
        return self.inserted / elapsed if elapsed > 0 else 0.0


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # imported before, same checksum
    missing: list[str] = field(default_factory=list)  # not published (404)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): checksum mismatch, bad rows
    trades_read: int = 0
    inserted: int = 0
    rest_filled: int = 0
    missing_days: list[tuple[str, date]] = field(default_factory=list)  # (symbol, day) to fill from REST
    days: set[tuple[str, date]] = field(default_factory=set)  # (symbol, day) whose stored rows changed
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        return self.trades_read - self.inserted


@dataclass
class FileResult:
    trades: int = 0
    inserted: int = 0
    tallies: dict[date, DayTally] = field(default_factory=dict)


OnProgress = Callable[[Progress], None]


class ArchiveImporter:
    """Imports files of the archive at `base_url` into the default database; see the module's docstring."""

    def __init__(self, base_url: str | None = None, *, on_progress: OnProgress | None = None,
                 force: bool = False, timeout: float = 60.0) -> None:
        self.base_url = (base_url or settings.BINANCE_ARCHIVE_URL).rstrip("/")
        self.on_progress = on_progress or (lambda progress: None)
        self.force = force  # import files again even when the marker says they were
        self.progress = Progress()
        self.report = ImportReport()
        self._http = httpx.Client(timeout=timeout, follow_redirects=True)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ArchiveImporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def import_periods(self, symbol: str, periods: Iterable[Period]) -> ImportReport:
        """Import `periods` of `symbol` in order; a monthly file not published falls back to daily files."""
        pending = list(periods)
        self.progress.files_total += len(pending)
        while pending:
            period = pending.pop(0)
            name = file_name(symbol, period)
            self.progress.current = name
            self.on_progress(self.progress)
            outcome = self._import_file(symbol, period)
            if outcome == "missing" and period.monthly:
                logger.info("%s: not published (yet); taking the month's daily files", name)
                daily = period.daily()
                pending[:0] = daily
                self.progress.files_total += len(daily) - 1
                continue
            if outcome == "missing":
                self.report.missing.append(name)
                self.report.missing_days += [(symbol, day) for day in period.days()]
            self.progress.files_done += 1
            self.on_progress(self.progress)
        return self.report

    def _import_file(self, symbol: str, period: Period) -> str:
        """"imported", "skipped", "missing" or "failed"."""
        name = file_name(symbol, period)
        url = file_url(self.base_url, symbol, period)
        checksum_text = self._get_text(url + ".CHECKSUM")
        if checksum_text is None:
            logger.warning("%s: not published (yet)", name)
            return "missing"
        try:
            expected = parse_checksum(checksum_text, name)
            marker = ArchiveFile.objects.filter(symbol=symbol, name=name).first()
            if marker is not None and marker.sha256 == expected and not self.force:
                self.report.skipped.append(name)
                return "skipped"
            if marker is not None and marker.sha256 != expected:
                logger.warning("%s: re-published (checksum %s, imported %s): importing it again", name,
                               expected[:12], marker.sha256[:12])
            with tempfile.TemporaryFile(prefix="archive-") as spool:
                if not self._download_verified(url, name, expected, spool):
                    return "missing"
                result = self._store_file(symbol, period, spool)
        except (ChecksumMismatch, ArchiveFormatError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            logger.error("%s: %s", name, exc)
            self.report.failed.append((name, str(exc)))
            return "failed"
        self._record(symbol, name, expected, result)
        self.report.imported.append(name)
        logger.info("%s: %d trades, %d new", name, result.trades, result.inserted)
        return "imported"

    # --- downloading -----------------------------------------------------------------------------

    def _get_text(self, url: str) -> str | None:
        """The body of a small file, or None when the archive has no such file (404)."""
        with self._get(url) as response:
            return None if response.status_code == 404 else response.read().decode("ascii", "replace")

    def _download_verified(self, url: str, name: str, expected: str, spool: IO[bytes]) -> bool:
        """Download into `spool`, hashing; a mismatch is tried once more (a broken transfer), then refused.
        False when the file is not there (404)."""
        for attempt in (1, 2):
            spool.seek(0)
            spool.truncate()
            digest = hashlib.sha256()
            with self._get(url) as response:
                if response.status_code == 404:
                    return False
                for block in response.iter_bytes(_DOWNLOAD_BLOCK):
                    digest.update(block)
                    spool.write(block)
            if digest.hexdigest() == expected:
                spool.seek(0)
                return True
            if attempt == 2:
                raise ChecksumMismatch(f"checksum mismatch: its CHECKSUM says {expected}, the file hashes to "
                                       f"{digest.hexdigest()}; nothing of it was stored")
            logger.warning("%s: checksum mismatch; downloading it again", name)
        return False

    @contextlib.contextmanager
    def _get(self, url: str) -> Iterator[httpx.Response]:
        """A 200 or 404 response (its body streamed), after retries of network errors and 5xx."""
        backoff = RETRY["archive download"].backoff()
        while True:
            try:
                response = self._http.send(self._http.build_request("GET", url), stream=True)
                if response.status_code not in {200, 404}:
                    response.close()
                    cls = ExchangeUnavailable if response.status_code >= 500 else RestError
                    raise cls(response.status_code, f"GET {url} answered {response.status_code}")
                break
            except (httpx.TransportError, RestError) as exc:
                error = exc if isinstance(exc, RestError) else ExchangeUnavailable(0, f"GET {url}: {exc}")
                delay = retry_delay(error, backoff, max_wait=60.0)
                if delay is None:
                    raise error from exc
                logger.warning("%s; retry %d in %.1f s", error, backoff.attempt, delay)
                time.sleep(delay)
        try:
            yield response
        finally:
            response.close()

    # --- storing ---------------------------------------------------------------------------------

    def _store_file(self, symbol: str, period: Period, spool: IO[bytes]) -> FileResult:
        with zipfile.ZipFile(spool) as archive:
            names = archive.namelist()
            member = csv_name(symbol, period) if csv_name(symbol, period) in names else names[0]
            with archive.open(member) as raw:
                return self._store_stream(symbol, _text_chunks(raw))

    def _store_stream(self, symbol: str, chunks: Iterable[str]) -> FileResult:
        """Parse here, store in a writer thread (its own connection): PostgreSQL works on one batch while
        Python parses the next. A failure on either side stops both; Ctrl-C lets the batch in hand commit."""
        result = FileResult()
        writer = _Writer(self.progress, self.on_progress)
        writer.start()
        try:
            line_no = 1
            for lines in line_chunks(chunks):
                trades = trades_from_lines(symbol, lines, line_no)
                line_no += len(lines)
                if trades:
                    tally_days(trades, result.tallies)
                    result.trades += len(trades)
                    self.progress.trades_read += len(trades)
                    writer.put(trades)
        finally:
            writer.finish()
        result.inserted = writer.inserted
        self.report.trades_read += result.trades
        self.report.inserted += result.inserted
        return result

    def _record(self, symbol: str, name: str, sha256: str, result: FileResult) -> None:
        """The file's marker, and what each of its days held (the archive's count for the report)."""
        firsts = [t.first_id for t in result.tallies.values() if t.first_id is not None]
        lasts = [t.last_id for t in result.tallies.values() if t.last_id is not None]
        ArchiveFile.objects.update_or_create(symbol=symbol, name=name, defaults={
            "sha256": sha256, "trades": result.trades, "inserted": result.inserted,
            "first_id": min(firsts, default=None), "last_id": max(lasts, default=None)})
        rows = {row.day: row for row in DayCoverage.objects.filter(symbol=symbol, channel=TRADE,
                                                                     day__in=list(result.tallies))}
        for day, tally in result.tallies.items():
            row = rows.setdefault(day, DayCoverage(symbol=symbol, channel=TRADE, day=day))
            row.archive_count, row.archive_first_id, row.archive_last_id = tally.count, tally.first_id, tally.last_id
            row.dirty = True
            self.report.days.add((symbol, day))
        DayCoverage.objects.bulk_update([r for r in rows.values() if r.pk is not None],
                                        ["archive_count", "archive_first_id", "archive_last_id", "dirty"])
        DayCoverage.objects.bulk_create([r for r in rows.values() if r.pk is None])


class _Writer(threading.Thread):
    """Stores batches from a small queue with store_trades, one transaction each."""

    def __init__(self, progress: Progress, on_progress: OnProgress) -> None:
        super().__init__(name="archive-writer", daemon=True)
        self._queue: queue.Queue[list[Trade] | None] = queue.Queue(maxsize=_QUEUE_BATCHES)
        self._progress, self._on_progress = progress, on_progress
        self.inserted = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while (batch := self._queue.get()) is not None:
                if self.error is None:
                    result = store_or_dead_letter(batch, ARCHIVE_IMPORT)
                    if result.refused:
                        raise ArchiveFormatError(f"the database refused {len(result.refused)} trades, first "
                                                 f"{result.refused[0].trade.trade_id}: {result.refused[0].reason}")
                    self.inserted += result.inserted
                    self._progress.inserted += result.inserted
        except BaseException as exc:  # handed to the importing thread, which raises it
            self.error = exc
            while self._queue.get() is not None:
                pass  # drain, so that the importing thread never blocks on a full queue
        finally:
            connection.close()

    def put(self, batch: list[Trade]) -> None:
        while True:
            self._raise_error()
            with contextlib.suppress(queue.Full):
                self._queue.put(batch, timeout=0.5)
                self._on_progress(self._progress)
                return

    def finish(self) -> None:
        """Wait for the batches handed over to be stored (or for the writer's error)."""
        self._queue.put(None)
        while self.is_alive():
            self.join(timeout=0.5)
        self._raise_error()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def _text_chunks(raw: IO[bytes]) -> Iterator[str]:
    while block := raw.read(_CHUNK_BYTES):
        yield block.decode("ascii")


# --- what the audit and the command use ----------------------------------------------------------


def import_range(symbols: Iterable[str], first: date, last: date, *, daily_only: bool = False,
                 on_progress: OnProgress | None = None, fill_from_rest: bool = True) -> ImportReport:
    """Import the days `first`..`last` of each symbol, fill what the archive lacks from REST, then verify
    the stored range (the audit's watermark) and bring the completeness report up to date."""
    from workers.archive_fill import fill_missing_days
    from workers.coverage import mark_days, update_coverage
    from workers.watermark import lower_watermark, verify_stored

    started = time.monotonic()
    today = datetime.now(UTC).date()
    with ArchiveImporter(on_progress=on_progress) as importer:
        for symbol in symbols:
            below = queries.first_id(symbol, TRADE)
            periods = plan_periods(first, last, today)
            if daily_only:
                periods = [day for period in periods for day in period.daily()]
            importer.import_periods(symbol, periods)
            report = importer.report
            if fill_from_rest:
                report.rest_filled += fill_missing_days(symbol, [d for s, d in report.missing_days if s == symbol],
                                                        report)
            lowest = queries.first_id(symbol, TRADE)
            if below is not None and lowest is not None and lowest < below:
                lower_watermark(symbol, TRADE, lowest - 1)  # trades stored under the verified range
            verify_stored(symbol, TRADE)
            mark_days(symbol, TRADE, [d for s, d in report.days if s == symbol])
            update_coverage(symbol, TRADE)
        importer.report.seconds = time.monotonic() - started
        return importer.report


def import_days(symbol: str, days: Iterable[date]) -> int:
    """Import the daily files of `days` again, whatever the markers say (the audit healing wide holes);
    returns the trades added. Files not published are left to REST."""
    with ArchiveImporter(force=True) as importer:
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
