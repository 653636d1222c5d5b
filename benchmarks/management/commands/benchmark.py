"""`python manage.py benchmark [--only client,storage] [--trades N]`: measure and print figures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from benchmarks import client as benchmarks
from benchmarks import storage as storage_benchmarks


def _pipeline(count: int) -> list[benchmarks.Result]:
    from benchmarks.pipeline import run_pipeline_benchmarks

    return run_pipeline_benchmarks(count)


def _archive(count: int) -> list[benchmarks.Result]:
    from benchmarks.archive import run_archive_benchmarks

    return run_archive_benchmarks(count)


def _browser(count: int) -> list[benchmarks.Result]:
    from benchmarks.browser import run_browser_benchmarks

    return run_browser_benchmarks(count)


SECTIONS: dict[str, Callable[[int], list[benchmarks.Result]]] = {
    "client": benchmarks.run_client_benchmarks,
    "standalone": benchmarks.bench_standalone,
    "storage": storage_benchmarks.run_storage_benchmarks,
    "pipeline": _pipeline,
    "browser": _browser,
    "archive": _archive,
}


class Command(BaseCommand):
    help = "Run the benchmarks against the fake exchange on loopback and print the figures."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(SECTIONS)}")
        parser.add_argument("--trades", type=int, default=200_000,
                            help="trades per end-to-end run (default 200,000)")
        parser.add_argument("--streams", type=int, default=1500, help="symbol streams of the scale run (default 1,500)")
        parser.add_argument("--rate", type=float, default=5000.0,
                            help="trades/s over all streams in the scale run's busy market (default 5,000)")
        parser.add_argument("--burst", type=int, default=500_000,
                            help="trades made at once over 10 streams in the scale run (default 500,000)")
        parser.add_argument("--minutes", type=float, default=30.0,
                            help="length of the chaos soak (--only soak; default 30)")

    def handle(self, *args: Any, **options: Any) -> None:
        chosen = [s for s in options["only"].split(",") if s] or list(SECTIONS)
        unknown = [s for s in chosen if s not in (*SECTIONS, "soak", "scale")]
        if unknown:
            known = ", ".join([*SECTIONS, "soak", "scale"])
            raise CommandError(f"unknown section(s) {', '.join(unknown)}; choose from {known}")
        if options["trades"] <= 0:
            raise CommandError("--trades must be a positive number")
        if not 0 < options["minutes"] < 10_000:  # also refuses nan and inf
            raise CommandError(f"--minutes must be a positive number of minutes, got {options['minutes']}")
        for line in benchmarks.machine_facts():
            self.stdout.write(line)
        for section in chosen:
            if section == "soak":  # only when asked for: it runs for --minutes
                self._soak(options["minutes"])
                continue
            if section == "scale":  # only when asked for: it runs the whole service for minutes
                self._scale(options["streams"], options["rate"], options["burst"])
                continue
            for result in SECTIONS[section](options["trades"]):
                self.stdout.write(result.line())

    def _scale(self, streams: int, rate: float, burst: int) -> None:
        from benchmarks.scale import run_scale

        if not 10 <= streams <= 10_000 or not 0 < rate < 1e7 or not 10 <= burst <= 10**8:
            raise CommandError(f"--streams {streams}, --rate {rate}, --burst {burst}: out of range")
        report = run_scale(streams, rate, burst, say=self.stdout.write)
        for line in report.lines:
            self.stdout.write(line)

    def _soak(self, minutes: float) -> None:
        from benchmarks.soak import run_soak

        report = run_soak(minutes, say=self.stdout.write)
        for line in report.lines():
            self.stdout.write(line)
        if report.missing or report.duplicated or report.different:
            raise CommandError("the soak lost, duplicated or changed trades: see above")
