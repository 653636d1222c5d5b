"""`manage.py trades SYMBOL --from ISO --to ISO [--channel] [--market] [--format parquet|csv|ndjson]
[--out PATH|-]`: the rows of `streams.dataset.trades`, streamed a day at a time to a file or to stdout."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams import dataset, formats
from streams.binance.protocol import CHANNELS, TRADE
from streams.lake.layout import MARKETS
from streams.outfiles import write_whole


class Command(BaseCommand):
    help = ("Write every trade of a stream in [--from, --to) (a date is its midnight, UTC) from the dataset (the "
            "lake's sealed days and the database's hot days) as Parquet, CSV or NDJSON, a day at a time.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("symbol", metavar="SYMBOL")
        parser.add_argument("--from", dest="start", required=True, metavar="ISO",
                            help="first moment, included: 2026-11-01 or 2026-11-01T12:00:00Z")
        parser.add_argument("--to", dest="end", required=True, metavar="ISO", help="end, excluded")
        parser.add_argument("--channel", choices=CHANNELS, default=TRADE)
        parser.add_argument("--market", choices=MARKETS, default="spot")
        parser.add_argument("--format", choices=formats.FORMATS, default="csv")
        parser.add_argument("--out", default="-", metavar="PATH",
                            help="the file to write (replaced only once whole); - (the default) is stdout")

    def handle(self, *args: Any, **options: Any) -> None:
        fmt, out = options["format"], options["out"]
        try:
            start = dataset.moment(options["start"], "--from")
            end = dataset.moment(options["end"], "--to")
            if end < start:
                raise dataset.DatasetError(f"--to {options['end']} is before --from {options['start']}")
            selection = dataset.Selection.of(options["symbol"], start, end, options["channel"], options["market"])
        except dataset.DatasetError as exc:
            raise CommandError(str(exc)) from None
        counted = _Counted(dataset.day_tables(selection))
        started = time.monotonic()
        try:
            whole = True
            if out == "-":
                whole = self._to_stdout(formats.encode(counted, fmt), fmt)
            else:
                write_whole(Path(out), formats.encode(counted, fmt))
        except (OSError, pa.ArrowException) as exc:
            raise CommandError(f"{selection.symbol} {selection.channel} ({selection.market}): {exc}") from None
        seconds = time.monotonic() - started
        done = f"{counted.rows:,} trades of {counted.days} days in {seconds:.1f} s"
        self.stderr.write(done + (f" -> {out}" if out != "-" else "" if whole else
                                  "; stopped there: the reader closed the pipe"))

    def _to_stdout(self, chunks: Iterator[bytes], fmt: str) -> bool:
        """Write the chunks to stdout; False when the reader went away before the end."""
        binary: IO[bytes] | None = getattr(self.stdout, "buffer", None)  # OutputWrapper passes it through
        if binary is None:  # a text stream without bytes under it (a StringIO from call_command)
            if fmt == "parquet":
                raise CommandError("--format parquet needs a binary stdout: give --out PATH")
            for chunk in chunks:
                self.stdout.write(chunk.decode(), ending="")
            return True
        if fmt == "parquet" and binary.isatty():
            raise CommandError("--format parquet is binary: give --out PATH or redirect stdout")
        self.stdout.flush()
        try:
            for chunk in chunks:
                binary.write(chunk)
            binary.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as command-line tools do; nothing is left to flush.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), binary.fileno())
            return False
        return True


class _Counted:
    """The day tables, counted as they go by (for the summary line)."""

    def __init__(self, tables: Iterable[pa.Table]) -> None:
        self._tables = tables
        self.rows = 0
        self.days = 0

    def __iter__(self) -> Iterator[pa.Table]:
        for table in self._tables:
            self.rows += table.num_rows
            self.days += 1
            yield table
