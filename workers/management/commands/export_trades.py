"""`manage.py export_trades SYMBOL [SYMBOL ...] --from YYYY-MM-DD --to YYYY-MM-DD [--channel] [--market]
--format parquet|csv --out DIR [--flat] [--complete-only]`: one file per stream and UTC day (streams.export),
each day's completeness said first."""

from __future__ import annotations

import logging
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams import dataset
from streams.binance.errors import InvalidStreamName
from streams.binance.protocol import CHANNELS, TRADE, normalize_symbol
from streams.export import CSV_MARKETS, FORMATS, ExportError, export_day, sealed_whole
from streams.lake.layout import MARKETS, DayKey
from streams.models import SealedDay
from workers.coverage import SPOT, update_coverage
from workers.management.commands.import_archive import day
from workers.models import DayCoverage, Verdict

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = ("Export the dataset's trades, one file per stream and UTC day (--from and --to included), in the lake's "
            "Hive layout or --flat: Parquet in the dataset's columns (a day sealed in the lake is its file, copied "
            "and checked) or gzipped CSV in the Binance archive's columns. A day not proven complete is exported "
            "with a warning, or refused with --complete-only.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("symbols", nargs="+", metavar="SYMBOL")
        parser.add_argument("--from", dest="first", type=day, required=True, help="first day (UTC), YYYY-MM-DD")
        parser.add_argument("--to", dest="last", type=day, required=True, help="last day (UTC), YYYY-MM-DD")
        parser.add_argument("--channel", choices=CHANNELS, default=TRADE)
        parser.add_argument("--market", choices=MARKETS, default=SPOT)
        parser.add_argument("--format", choices=FORMATS, default="parquet")
        parser.add_argument("--out", type=Path, required=True, help="directory for the files (created if needed)")
        parser.add_argument("--flat", action="store_true",
                            help="every file in DIR itself, not in market=/channel=/ticker_symbol=/date= folders")
        parser.add_argument("--complete-only", action="store_true",
                            help="refuse days with holes or not yet checked instead of exporting them with a warning")

    def handle(self, *args: Any, **options: Any) -> None:
        first, last, fmt, out = options["first"], options["last"], options["format"], options["out"]
        channel, market = options["channel"], options["market"]
        try:
            dataset.moment(first, "--from")
            dataset.moment(last, "--to")
        except dataset.DatasetError as exc:
            raise CommandError(str(exc)) from None
        if last < first:
            raise CommandError(f"--to {last} is before --from {first}")
        if fmt == "csv" and market not in CSV_MARKETS:
            raise CommandError(f"--format csv writes the spot archive's layout; use --format parquet for {market}")
        try:
            symbols = [normalize_symbol(s) for s in dict.fromkeys(options["symbols"])]
        except InvalidStreamName as exc:
            raise CommandError(str(exc)) from None
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"--out {out}: {exc}") from None
        started, files, rows, refused, failed = time.monotonic(), 0, 0, [], []
        for symbol in symbols:
            verdicts = day_verdicts(symbol, channel, market, first, last)
            for key, (verdict, why, sealed) in verdicts.items():
                if verdict != Verdict.COMPLETE and options["complete_only"]:
                    refused.append(why)
                    self.stderr.write(f"refused {why}")
                    continue
                try:
                    result = export_day(key, fmt, out, flat=options["flat"], sealed=sealed)
                except (ExportError, OSError) as exc:
                    failed.append(str(exc))
                    self.stderr.write(f"FAILED {exc}")
                    logger.error("export of %s failed: %s", key, exc)
                    continue
                if result.path is None:
                    self.stderr.write(f"{symbol} {key.day}: no trades stored, no file")
                    continue
                files, rows = files + 1, rows + result.rows
                note = " (the lake's sealed file)" if result.copied else ""
                if verdict != Verdict.COMPLETE:
                    note += f"  WARNING: exported though {why}"
                self.stdout.write(f"{result.path} {result.rows:,} trades{note}")
        seconds = time.monotonic() - started
        self.stdout.write(f"{files} files, {rows:,} trades in {seconds:.1f} s ({rows / seconds if seconds else 0:,.0f}"
                          f" trades/s)")
        problems = [f"{len(refused)} days refused (not complete): {'; '.join(refused[:10])}"] if refused else []
        problems += [f"{len(failed)} days failed: {'; '.join(failed[:10])}"] if failed else []
        if problems:
            raise CommandError(" ".join(problems))


def day_verdicts(symbol: str, channel: str, market: str, first: date,
                 last: date) -> dict[DayKey, tuple[str, str, SealedDay | None]]:
    """Per day of the range: its completeness verdict, a line saying why, and its manifest if sealed. A day
    sealed complete in the lake is complete; the database's days have the coverage report's verdict (brought
    up to date first)."""
    sealed = {row.day: row for row in SealedDay.objects.filter(
        market=market, symbol=symbol, channel=channel, day__gte=first, day__lte=last)}
    coverage: dict[date, DayCoverage] = {}
    if market == SPOT:
        update_coverage(symbol, channel)
        coverage = {r.day: r for r in DayCoverage.objects.filter(symbol=symbol, channel=channel, day__gte=first,
                                                                  day__lte=last)}
    found: dict[DayKey, tuple[str, str, SealedDay | None]] = {}
    current = first
    while current <= last:
        key = DayKey(market, symbol, channel, current)
        manifest, row = sealed.get(current), coverage.get(current)
        if sealed_whole(manifest):
            verdict, holes = str(Verdict.COMPLETE), ""
        elif manifest is not None and manifest.state == SealedDay.State.DAMAGED:
            verdict, holes = "damaged", f" ({manifest.problem})"
        else:
            verdict = row.verdict if row else Verdict.UNCHECKED
            shown = ", ".join(f"{a}..{b}" for a, b in (row.holes if row else [])[:5])
            holes = f" (holes {shown})" if shown else ""
        found[key] = (verdict, f"{symbol} {current}: {verdict}{holes}", manifest)
        current += timedelta(days=1)
    return found
