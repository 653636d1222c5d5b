"""`manage.py export_trades SYMBOL [SYMBOL ...] --from YYYY-MM-DD --to YYYY-MM-DD --format parquet|csv --out DIR
[--complete-only]`: one file per symbol and UTC day (streams.export), each day's completeness checked first."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams.binance.errors import InvalidStreamName
from streams.binance.protocol import TRADE, normalize_symbol
from streams.export import FORMATS, export_day
from workers.coverage import update_coverage
from workers.management.commands.import_archive import day
from workers.models import DayCoverage, Verdict

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = ("Export stored trades (channel trade), one file per symbol and UTC day: Parquet (typed columns) or "
            "gzipped CSV in the archive's columns. A day not proven complete is exported with a warning, or "
            "refused with --complete-only.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("symbols", nargs="+", metavar="SYMBOL")
        parser.add_argument("--from", dest="first", type=day, required=True, help="first day (UTC), YYYY-MM-DD")
        parser.add_argument("--to", dest="last", type=day, required=True, help="last day (UTC), YYYY-MM-DD")
        parser.add_argument("--format", choices=FORMATS, default="parquet")
        parser.add_argument("--out", type=Path, required=True, help="directory for the files (created if needed)")
        parser.add_argument("--complete-only", action="store_true",
                            help="refuse days with holes or not yet checked instead of exporting them with a warning")

    def handle(self, *args: Any, **options: Any) -> None:
        first, last, fmt, out = options["first"], options["last"], options["format"], options["out"]
        if last < first:
            raise CommandError(f"--to {last} is before --from {first}")
        try:
            symbols = [normalize_symbol(s) for s in dict.fromkeys(options["symbols"])]
        except InvalidStreamName as exc:
            raise CommandError(str(exc)) from None
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"--out {out}: {exc}") from None
        started, files, rows, refused = time.monotonic(), 0, 0, []
        for symbol in symbols:
            update_coverage(symbol, TRADE)
            verdicts = {r.day: r for r in DayCoverage.objects.filter(symbol=symbol, channel=TRADE,
                                                                      day__gte=first, day__lte=last)}
            current = first
            while current <= last:
                row = verdicts.get(current)
                verdict = row.verdict if row else Verdict.UNCHECKED
                holes = ", ".join(f"{a}..{b}" for a, b in (row.holes if row else [])[:5])
                why = f"{symbol} {current}: {verdict}" + (f" (holes {holes})" if holes else "")
                if verdict != Verdict.COMPLETE and options["complete_only"]:
                    refused.append(why)
                    self.stderr.write(f"refused {why}")
                else:
                    result = export_day(symbol, TRADE, current, fmt, out)
                    if result.path is None:
                        self.stderr.write(f"{symbol} {current}: no trades stored, no file")
                    else:
                        files, rows = files + 1, rows + result.rows
                        note = "" if verdict == Verdict.COMPLETE else f"  WARNING: exported though {why}"
                        self.stdout.write(f"{result.path} {result.rows:,} trades{note}")
                current += timedelta(days=1)
        seconds = time.monotonic() - started
        self.stdout.write(f"{files} files, {rows:,} trades in {seconds:.1f} s ({rows / seconds if seconds else 0:,.0f}"
                          f" trades/s)")
        if refused:
            raise CommandError(f"{len(refused)} days refused (not complete): {'; '.join(refused[:10])}")
