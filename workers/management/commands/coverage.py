"""`manage.py coverage [SYMBOL] [--channel trade|aggTrade] [--from YYYY-MM-DD] [--to YYYY-MM-DD] [--json]
[--recheck]`: completeness per symbol and UTC day (workers.coverage), brought up to date first."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams import queries
from streams.binance.errors import InvalidStreamName
from streams.binance.protocol import CHANNELS, normalize_channel, normalize_symbol
from streams.models import SealedDay
from workers.coverage import (
    coverage_rows,
    mark_days,
    seals_of,
    streams_covered,
    update_coverage,
    utc_today,
)
from workers.management.commands.import_archive import day
from workers.models import DayCoverage
from workers.seal import ScrubReport, cold_before, coverage_entries, stored_months, verify_sealed, where


class Command(BaseCommand):
    help = ("Completeness per symbol and UTC day: trades stored, first and last id, holes, the archive's count, "
            "and a verdict (complete, holes, unchecked).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("symbol", nargs="?", help="like BTCUSDT (default: every stream with data)")
        parser.add_argument("--channel", default=None, help="trade or aggTrade (default: both)")
        parser.add_argument("--from", dest="first", type=day, default=None, help="first day, YYYY-MM-DD")
        parser.add_argument("--to", dest="last", type=day, default=None, help="last day, YYYY-MM-DD")
        parser.add_argument("--json", action="store_true", help='{"days": [...]}, as /api/coverage/ answers')
        parser.add_argument("--recheck", action="store_true",
                            help="compute the days in range again from both tiers, complete ones too (finds rows "
                                 "deleted since; a hole found sends the audit back to fill it), and verify their "
                                 "sealed lake files now (SHA-256, rows, ids)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            symbol = normalize_symbol(options["symbol"]) if options["symbol"] else None
            channel = normalize_channel(options["channel"]) if options["channel"] else None
        except InvalidStreamName as exc:
            raise CommandError(str(exc)) from None
        first, last = options["first"], options["last"]
        if first and last and last < first:
            raise CommandError(f"--to {last} is before --from {first}")
        streams = [(s, c) for s, c in _streams(symbol) if channel in (None, c)]
        for sym, chan in streams:
            if options["recheck"]:
                days = DayCoverage.objects.filter(symbol=sym, channel=chan)
                days = days.filter(day__gte=first) if first else days
                days = days.filter(day__lte=last) if last else days
                mark_days(sym, chan, days.values_list("day", flat=True))
                self._verify_sealed(sym, chan, first, last)
            update_coverage(sym, chan)
        rows = [r for r in coverage_rows(symbol, channel, first, last) if (r.symbol, r.channel) in set(streams)]
        if options["json"]:
            self.stdout.write(json.dumps({"days": coverage_entries(rows)}))
            return
        seals = seals_of(rows)
        months, cutoff = stored_months(), cold_before()
        places = {(r.symbol, r.channel, r.day): where(r, seals.get((r.symbol, r.channel, r.day)), months, cutoff)
                  for r in rows}
        if not rows:
            self.stdout.write("no stored trades" + (f" for {symbol}" if symbol else ""))
            return
        self._table(rows, seals, places)

    def _verify_sealed(self, symbol: str, channel: str, first: Any, last: Any) -> None:
        sealed = SealedDay.objects.filter(symbol=symbol, channel=channel)
        sealed = sealed.filter(day__gte=first) if first else sealed
        sealed = sealed.filter(day__lte=last) if last else sealed
        report = ScrubReport()
        for sealed_day in sealed.order_by("day"):
            verify_sealed(sealed_day, report)
        if report.verified:
            self.stdout.write(f"{symbol} {channel}: {report.verified} sealed files verified, "
                              f"{len(report.damaged)} damaged ({', '.join(report.damaged) or 'none'}), "
                              f"{len(report.rebuilt)} rebuilt from the database")

    def _table(self, rows: list[DayCoverage], seals: dict[Any, SealedDay], places: dict[Any, str]) -> None:
        current = None
        for row in rows:
            if (row.symbol, row.channel) != current:
                current = (row.symbol, row.channel)
                self.stdout.write(f"\n{row.symbol} {row.channel}")
                self.stdout.write(f"{'day':<11} {'trades':>11} {'first id':>14} {'last id':>14} {'archive':>11}  "
                                  f"{'verdict':<9}  {'where':<8}  {'seal':<8}  {'verified':<16}  holes")
            archive = "" if row.archive_count is None else f"{row.archive_count:,}"
            holes = ", ".join(f"{a}..{b}" for a, b in row.holes[:5]) + (" ..." if len(row.holes) > 5 else "")
            sealed = seals.get((row.symbol, row.channel, row.day))
            seal = "" if sealed is None else (sealed.state if sealed.complete or sealed.state != "sealed"
                                              else "partial")
            verified = "" if sealed is None else f"{sealed.verified_at:%Y-%m-%d %H:%M}"
            self.stdout.write(f"{row.day!s:<11} {row.trades:>11,} {row.first_id or '':>14} {row.last_id or '':>14} "
                              f"{archive:>11}  {row.verdict:<9}  {places[(row.symbol, row.channel, row.day)]:<8}  "
                              f"{seal:<8}  {verified:<16}  {holes}")
        verdicts = Counter(r.verdict for r in rows)
        damaged = sum(1 for s in seals.values() if s.state == SealedDay.State.DAMAGED)
        self.stdout.write(f"\n{len(rows)} days: {verdicts['complete']} complete, {verdicts['holes']} with holes, "
                          f"{verdicts['unchecked']} unchecked; {len(seals)} sealed in the lake, {damaged} damaged "
                          f"(today is {utc_today()}, UTC)")


def _streams(symbol: str | None) -> list[tuple[str, str]]:
    from workers.registry import enabled_streams

    found = set(streams_covered(symbol))
    found.update((sid.symbol, sid.channel) for sid in enabled_streams() if symbol in (None, sid.symbol))
    if symbol:  # collected without being enabled (the one-off command): one index lookup per channel
        found.update((symbol, c) for c in CHANNELS if queries.first_id(symbol, c) is not None)
    return sorted(found)
