"""`manage.py fake_exchange`: run the fake Binance exchange until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams.fake.exchange import FakeExchange
from streams.fake.faults import FaultRates


def parse_symbols(text: str) -> dict[str, float]:
    """`btcusdt:100,ethusdt:20` → {"BTCUSDT": 100.0, "ETHUSDT": 20.0}, or CommandError naming the bad part."""
    symbols: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, rate = part.partition(":")
        if not (name.isascii() and name.isalnum() and 2 <= len(name) <= 20):
            raise CommandError(f"--symbols: invalid symbol {name!r} in {part!r}; expected like btcusdt:100")
        try:
            value = float(rate) if rate else 10.0
        except ValueError:
            raise CommandError(
                f"--symbols: invalid rate {rate!r} for {name}; expected trades per second"
            ) from None
        if not value >= 0:
            raise CommandError(f"--symbols: rate for {name} must be >= 0, got {rate!r}")
        symbols[name.upper()] = value
    if not symbols:
        raise CommandError("--symbols: give at least one symbol, like btcusdt:100")
    return symbols


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-01") from None


class Command(BaseCommand):
    help = "Run the fake Binance exchange (WebSocket streams + REST market data) on this machine."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--ws-port", type=int, default=9443)
        parser.add_argument("--rest-port", type=int, default=9444)
        parser.add_argument("--symbols", default="btcusdt:100", help="symbol:trades_per_second,...")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument(
            "--lifetime", type=float, default=24 * 3600.0, help="connection lifetime, seconds"
        )
        parser.add_argument("--drop-rate", type=float, default=0.0, help="drops per connection per second")
        parser.add_argument("--stall-rate", type=float, default=0.0, help="stalls per connection per second")
        parser.add_argument(
            "--garbage-rate", type=float, default=0.0, help="bad frames per connection per second"
        )
        parser.add_argument(
            "--replay-rate",
            type=float,
            default=0.0,
            help="replays of the last 20 trades per connection per second",
        )
        parser.add_argument(
            "--history-from",
            type=_day,
            default=None,
            help="YYYY-MM-DD: trades from that day on are made at start-up (the archive serves them)",
        )
        parser.add_argument(
            "--history-days",
            type=int,
            default=None,
            help="as --history-from, that many days before today (UTC)",
        )
        parser.add_argument(
            "--history-rate", type=float, default=0.01, help="trades per second of the history (default 0.01)"
        )
        parser.add_argument(
            "--rest-garbage-rate",
            type=float,
            default=0.0,
            help="REST answers replaced by an HTML error page, per second for the whole exchange",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("ws_port", "rest_port"):
            if not 0 <= options[name] <= 65535:
                raise CommandError(f"--{name.replace('_', '-')} must be a port number 0-65535")
        if options["history_days"] is not None:
            if options["history_from"] is not None or not 0 < options["history_days"] <= 3660:
                raise CommandError("--history-days: 1 to 3660 days, and not with --history-from")
            today = datetime.now(UTC).date()
            options["history_from"] = today - timedelta(days=options["history_days"])
        if not options["lifetime"] > 0:
            raise CommandError("--lifetime must be > 0 seconds")
        try:
            rates = FaultRates(
                drop=options["drop_rate"],
                stall=options["stall_rate"],
                garbage=options["garbage_rate"],
                replay=options["replay_rate"],
                rest_garbage=options["rest_garbage_rate"],
            )
            exchange = FakeExchange(
                parse_symbols(options["symbols"]),
                seed=options["seed"],
                host=options["host"],
                ws_port=options["ws_port"],
                rest_port=options["rest_port"],
                max_lifetime=options["lifetime"],
                faults=rates,
                history_from=options["history_from"],
                history_rate=options["history_rate"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        try:
            asyncio.run(self._serve(exchange))
        except OSError as exc:
            raise CommandError(f"cannot listen: {exc}") from None

    async def _serve(self, exchange: FakeExchange) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        async with exchange:
            self.stdout.write(f"BINANCE_WS_URL={exchange.ws_url}")
            self.stdout.write(f"BINANCE_REST_URL={exchange.rest_url}")
            self.stdout.write("fake exchange running; Ctrl-C to stop")
            await stop.wait()
        self.stdout.write("fake exchange stopped")
