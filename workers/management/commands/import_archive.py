"""`manage.py import_archive SYMBOL [SYMBOL ...] --from YYYY-MM-DD [--to YYYY-MM-DD] [--channel trade|aggTrade|all]
[--daily] [--no-rest] [--force]`: Binance's public trade archive into the dataset (workers.archive_import): closed
days older than the hot window into the lake, the others into the database. Any symbol the archive has, traded
today or delisted: the exchange is not asked."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from datetime import UTC, date, datetime
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams.archive import DATASETS
from streams.binance.errors import InvalidStreamName, StreamError
from streams.binance.protocol import normalize_symbol
from workers.archive_import import ImportReport, Progress, import_range

logger = logging.getLogger(__name__)

_LOG_EVERY = 10.0  # seconds between progress lines when not on a terminal
_BAR_EVERY = 0.2


def day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-01") from None


class ProgressLine:
    """A live line on a terminal (files, trades, trades/s, the file in hand); a log line every 10 s elsewhere."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last < (_BAR_EVERY if self.tty else _LOG_EVERY):
            return
        self._last = now
        text = (f"files {progress.files_done}/{progress.files_total}  trades {progress.inserted:,} new of "
                f"{progress.trades_read:,} read  {progress.rate:,.0f} trades/s  {progress.current}")
        if self.tty:
            self.stream.write(f"\r{text[:150]:<150}")
            self.stream.flush()
        else:
            logger.info("%s", text)

    def done(self) -> None:
        if self.tty and self._last:
            self.stream.write("\n")


class Command(BaseCommand):
    help = ("Import Binance's public trade archive (data.binance.vision, or BINANCE_ARCHIVE_URL): monthly files "
            "for whole months, daily files for the rest, each verified against its CHECKSUM; days not published "
            "yet are filled from REST. Resumable: files imported before are skipped.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("symbols", nargs="+", metavar="SYMBOL", help="like BTCUSDT")
        parser.add_argument("--from", dest="first", type=day, required=True, help="first day (UTC), YYYY-MM-DD")
        parser.add_argument("--to", dest="last", type=day, default=None,
                            help="last day (UTC), YYYY-MM-DD (default: today, filled from REST up to the live stream)")
        parser.add_argument("--daily", action="store_true",
                            help="daily files only (less temporary disk than a monthly file of a busy symbol)")
        parser.add_argument("--no-rest", action="store_true", help="do not fill days the archive lacks from REST")
        parser.add_argument("--channel", choices=[*DATASETS, "all"], default="trade",
                            help="trade (the archive's trades files, default), aggTrade (its aggTrades files) or all")
        parser.add_argument("--force", action="store_true",
                            help="import files again even if imported before with the same checksum (what is stored "
                                 "and differs from the file is corrected to the file's values, and reported)")

    def handle(self, *args: Any, **options: Any) -> None:
        first, last = options["first"], options["last"] or datetime.now(UTC).date()
        if last < first:
            raise CommandError(f"--to {last} is before --from {first}")
        try:
            symbols = [normalize_symbol(s) for s in dict.fromkeys(options["symbols"])]
        except InvalidStreamName as exc:
            raise CommandError(str(exc)) from None
        channels = list(DATASETS) if options["channel"] == "all" else [options["channel"]]
        self.stdout.write(f"importing {', '.join(symbols)} {', '.join(channels)} {first}..{last} from "
                          f"{settings.BINANCE_ARCHIVE_URL}")
        progress = ProgressLine(sys.stderr)
        # Millions of short-lived trades go through this process: what it holds already (Django, the app)
        # need not be scanned by the cyclic garbage collector each time they make it run.
        gc.collect()
        gc.freeze()
        try:
            report = import_range(symbols, first, last, daily_only=options["daily"], on_progress=progress,
                                  fill_from_rest=not options["no_rest"], force=options["force"],
                                  datasets=[DATASETS[c] for c in channels])
        except KeyboardInterrupt:
            progress.done()
            raise CommandError("interrupted; the files imported so far are kept: run the same command again to "
                               "resume", returncode=130) from None
        except StreamError as exc:  # the archive or the exchange could not answer (after retries), or refused
            progress.done()
            raise CommandError(f"{exc}; the files imported so far are kept: run the same command again to "
                               "resume") from None
        finally:
            gc.unfreeze()
        progress.done()
        self._summary(report)
        if report.failed:
            raise CommandError("; ".join(f"{name}: {reason}" for name, reason in report.failed))

    def _summary(self, report: ImportReport) -> None:
        rate = report.trades_read / report.seconds if report.seconds else 0.0
        self.stdout.write(
            f"{len(report.imported)} files imported, {len(report.skipped)} already imported, "
            f"{len(report.missing)} not published, {len(report.failed)} failed (nothing of them stored); "
            f"{report.trades_read:,} trades read, {report.inserted:,} new, {report.duplicates:,} stored already, "
            f"{report.repaired:,} corrected to the archive's values, {report.lake_days:,} days into the lake, "
            f"{report.rest_filled:,} from REST, in {report.seconds:.1f} s ({rate:,.0f} trades/s)")
        for name in report.missing:
            self.stdout.write(f"not published yet: {name}" + ("" if report.rest_filled else " (not filled)"))
