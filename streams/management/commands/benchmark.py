"""`python manage.py benchmark [--only parse,receive]`: measure, print figures with the machine's facts."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams import benchmarks


class Command(BaseCommand):
    help = "Run the benchmarks against the fake exchange on loopback and print the figures."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(benchmarks.SECTIONS)}")
        parser.add_argument("--trades", type=int, default=200_000, help="trades per receive run (default 200,000)")

    def handle(self, *args: Any, **options: Any) -> None:
        chosen = [s for s in options["only"].split(",") if s] or list(benchmarks.SECTIONS)
        unknown = [s for s in chosen if s not in benchmarks.SECTIONS]
        if unknown:
            raise CommandError(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(benchmarks.SECTIONS)}")
        if options["trades"] <= 0:
            raise CommandError("--trades must be a positive number")
        for line in benchmarks.machine_facts():
            self.stdout.write(line)
        for section in chosen:
            runner = benchmarks.SECTIONS[section]
            result = runner(options["trades"]) if section == "receive" else runner()
            self.stdout.write(result.line())
