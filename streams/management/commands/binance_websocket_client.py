"""`python manage.py binance_websocket_client --symbol btcusdt --channel trade [--batch-size N] [--limit N]
[--resume]`: collect one stream into the database without Celery."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams.binance.backoff import RETRY
from streams.binance.errors import InvalidStreamName, StreamError, UnknownSymbol
from streams.binance.inputs import seconds, whole_number
from streams.binance.logcontext import stream_context
from streams.binance.protocol import normalize_channel, normalize_symbol, stream_name
from streams.binance.rest import BinanceRest
from streams.binance.supervision import TaskFailed
from streams.collector import Progress, collect_to_database
from streams.config import client_config
from streams.failures import describe
from workers.store import ONE_OFF, store_for

logger = logging.getLogger(__name__)

_LOG_EVERY = 10.0  # seconds between progress log lines when not on a terminal


def _positive(value: str) -> int:
    try:
        number = whole_number(value)  # ASCII digits: int() would take "١٢" too
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _seconds(option: str, text: object, *, minimum: float, inclusive: bool) -> float:
    """A finite number of seconds, or a one-line CommandError naming the option and the value
    (float() takes "nan" and "inf", which would make a partial batch wait forever)."""
    try:
        return seconds(str(text), minimum=minimum, inclusive=inclusive)  # str(): call_command may pass a float
    except ValueError as exc:
        raise CommandError(f"{option}: {exc}") from None


class Command(BaseCommand):
    help = "Stream one Binance symbol's trades into the database (immediate, or batched with --batch-size)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--symbol", default="btcusdt", help="symbol, e.g. btcusdt (default)")
        parser.add_argument("--channel", default="trade", help="trade (default) or aggTrade")
        parser.add_argument("--batch-size", type=_positive, default=None,
                            help="write this many trades at a time (also every --flush-interval); "
                                 "without it, every trade is written as it arrives")
        parser.add_argument("--flush-interval", default="1",
                            help="seconds after which a partial batch is written (default 1)")
        parser.add_argument("--limit", type=_positive, default=None,
                            help="stop after this many trades (default: run until Ctrl-C or SIGTERM)")
        parser.add_argument("--wait-for-exchange", default="0", metavar="SECONDS",
                            help="keep trying to reach the exchange this long before giving up (default 0)")
        parser.add_argument("--resume", action="store_true",
                            help="start after the last trade stored for this stream, backfilling the gap")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            symbol, channel = normalize_symbol(options["symbol"]), normalize_channel(options["channel"])
        except InvalidStreamName as exc:
            raise CommandError(str(exc)) from None
        options["flush_interval"] = _seconds("--flush-interval", options["flush_interval"], minimum=0.0,
                                             inclusive=False)
        options["wait_for_exchange"] = _seconds("--wait-for-exchange", options["wait_for_exchange"], minimum=0.0,
                                                inclusive=True)
        try:
            with stream_context(stream_name(symbol, channel)):
                progress = asyncio.run(self._collect(symbol, channel, options))
        except UnknownSymbol as exc:
            raise CommandError(str(exc)) from None
        except StreamError as exc:
            raise CommandError(f"collection stopped: {exc}") from None
        except ExceptionGroup as errors:  # a part of the collection failed (logged with its traceback)
            first = errors.exceptions[0]
            if isinstance(first, UnknownSymbol):
                raise CommandError(str(first)) from None
            if not isinstance(first, (StreamError, TaskFailed)):
                logger.error("collection failed", exc_info=first)
            raise CommandError(f"collection stopped: {describe(first)}") from None
        self._finish_line()
        self.stdout.write(_summary(symbol, channel, progress))
        if progress.unwritten:
            raise CommandError(f"{progress.unwritten} trades could not be written (database unavailable); "
                               f"run again with --resume to backfill them from the exchange")

    async def _collect(self, symbol: str, channel: str, options: dict[str, Any]) -> Progress:
        async with BinanceRest(settings.BINANCE_REST_URL, retry=RETRY["symbol check"]) as rest:
            await rest.validate_symbol(symbol, wait=options["wait_for_exchange"])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        self._on_tty = sys.stdout.isatty()
        self._last_log = 0.0
        mode = f"batches of {options['batch_size']}" if options["batch_size"] else "immediate writes"
        logger.info("collecting %s@%s into %s (%s)", symbol.lower(), channel,
                    settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1], mode)
        return await collect_to_database(
            client_config([(symbol, channel)]), batch_size=options["batch_size"], limit=options["limit"],
            resume=options["resume"], stop=stop, on_progress=self._show, flush_interval=options["flush_interval"],
            store=store_for(ONE_OFF),  # what the database refuses is dead-lettered, as every writer's is
        )

    def _show(self, progress: Progress) -> None:
        line = (f"{progress.stored:,} trades | {progress.rate:,.1f}/s | last {progress.last_price} | "
                f"reconnects {progress.reconnects} | gaps healed {progress.gaps_healed} | "
                f"pending {progress.pending} | {progress.state}")
        if self._on_tty:
            self.stdout.write(f"\r\x1b[K{line}", ending="")
            self.stdout.flush()
        elif progress.elapsed - self._last_log >= _LOG_EVERY:
            self._last_log = progress.elapsed
            logger.info("%s", line)

    def _finish_line(self) -> None:
        if getattr(self, "_on_tty", False):
            self.stdout.write("")


def _summary(symbol: str, channel: str, p: Progress) -> str:
    return (f"{stream_name(symbol, channel)}: stored {p.stored:,} trades in {p.elapsed:.1f} s "
            f"({p.duplicates} duplicates skipped, {p.rejected} rejected); reconnects {p.reconnects}, "
            f"gaps found {p.gaps_found}, healed {p.gaps_healed}, trades missed {p.missed}, "
            f"parse errors {p.parse_errors}, database errors {p.db_errors}, broadcast drops {p.broadcast_dropped}")
