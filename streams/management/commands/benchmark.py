"""`python manage.py benchmark [--only client,storage] [--trades N]`: measure and print figures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams import benchmarks, storage_benchmarks


def _pipeline(count: int) -> list[benchmarks.Result]:
    from workers.benchmarks import run_pipeline_benchmarks

    return run_pipeline_benchmarks(count)


SECTIONS: dict[str, Callable[[int], list[benchmarks.Result]]] = {
    "client": benchmarks.run_client_benchmarks,
    "storage": storage_benchmarks.run_storage_benchmarks,
    "pipeline": _pipeline,
}


class Command(BaseCommand):
    help = "Run the benchmarks against the fake exchange on loopback and print the figures."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(SECTIONS)}")
        parser.add_argument("--trades", type=int, default=200_000,
                            help="trades per end-to-end run (default 200,000)")
        parser.add_argument("--minutes", type=float, default=30.0,
                            help="length of the chaos soak (--only soak; default 30)")

    def handle(self, *args: Any, **options: Any) -> None:
        chosen = [s for s in options["only"].split(",") if s] or list(SECTIONS)
        unknown = [s for s in chosen if s not in (*SECTIONS, "soak")]
        if unknown:
            raise CommandError(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}, soak")
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
            for result in SECTIONS[section](options["trades"]):
                self.stdout.write(result.line())

    def _soak(self, minutes: float) -> None:
        from workers.soak import run_soak

        report = run_soak(minutes, say=self.stdout.write)
        for line in report.lines():
            self.stdout.write(line)
        if report.missing or report.duplicated or report.different:
            raise CommandError("the soak lost, duplicated or changed trades: see above")
