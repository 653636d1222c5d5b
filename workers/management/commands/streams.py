"""`manage.py streams enable|disable|list|status [SYMBOL] [--channel trade|aggTrade]`: the symbol streams."""

from __future__ import annotations

import logging
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams.binance.errors import InvalidStreamName, StreamError
from streams.binance.protocol import CHANNELS, TRADE, normalize_channel, normalize_symbol
from workers import registry
from workers.keys import stream_id
from workers.status import read_status

logger = logging.getLogger(__name__)

ACTIONS = ("enable", "disable", "list", "status")
STATUS_FIELDS = ("state", "worker", "connected_for", "last_trade_age", "heartbeat_age", "stuck_for", "trades_per_s",
                 "reconnects", "gaps_found", "gaps_healed", "missed", "ids_back", "parse_errors", "errors", "lag_ms",
                 "last_error")


class Command(BaseCommand):
    help = "Enable, disable, list symbol streams, or show their live status."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=ACTIONS)
        parser.add_argument("symbol", nargs="?", help="The exchange's symbol, like BTCUSDT.")
        parser.add_argument("--channel", default=None, help=f"One of {', '.join(CHANNELS)} (default {TRADE}).")

    def handle(self, *args: Any, action: str, symbol: str | None, channel: str | None, **options: Any) -> None:
        try:
            getattr(self, f"handle_{action}")(symbol, channel)
        except InvalidStreamName as exc:
            raise CommandError(str(exc)) from exc

    def handle_enable(self, symbol: str | None, channel: str | None) -> None:
        symbol, channel = _required(symbol, "enable"), normalize_channel(channel or TRADE)
        try:
            registry.validate_symbol(symbol)
        except StreamError as exc:  # UnknownSymbol, or the exchange could not answer
            raise CommandError(f"cannot enable {symbol} {channel}: {exc}") from exc
        registry.enable_stream(symbol, channel)
        self.stdout.write(f"enabled {stream_id(symbol, channel)}")

    def handle_disable(self, symbol: str | None, channel: str | None) -> None:
        symbol, channel = _required(symbol, "disable"), normalize_channel(channel or TRADE)
        sid = stream_id(symbol, channel)
        if not registry.stream_tasks().filter(name=registry.task_name(symbol, channel)).exists():
            raise CommandError(f"no stream {sid}: `streams list` shows the known ones")
        changed = registry.disable_stream(symbol, channel)
        self.stdout.write(f"disabled {sid}" if changed else f"{sid} was already disabled")

    def handle_list(self, symbol: str | None, channel: str | None) -> None:
        rows = _selected(symbol, channel)
        for (sym, chan), enabled in rows:
            self.stdout.write(f"{stream_id(sym, chan)}\t{'enabled' if enabled else 'disabled'}")
        if not rows:
            self.stdout.write("no symbol streams (add one with `streams enable SYMBOL`)")

    def handle_status(self, symbol: str | None, channel: str | None) -> None:
        rows = _selected(symbol, channel)
        if symbol and not rows:
            raise CommandError(f"no stream for {normalize_symbol(symbol)}: `streams list` shows the known ones")
        for (sym, chan), enabled in rows:
            self.stdout.write(_status_line(stream_id(sym, chan), enabled))
        if not rows:
            self.stdout.write("no symbol streams (add one with `streams enable SYMBOL`)")


def _required(symbol: str | None, action: str) -> str:
    if not symbol:
        raise CommandError(f"`streams {action}` needs a SYMBOL, like BTCUSDT")
    return normalize_symbol(symbol)


def _selected(symbol: str | None, channel: str | None) -> list[tuple[tuple[str, str], bool]]:
    """((SYMBOL, channel), enabled) of the streams matching the optional symbol and channel."""
    wanted_symbol = normalize_symbol(symbol) if symbol else None
    wanted_channel = normalize_channel(channel) if channel else None
    rows = []
    for task in registry.stream_tasks():
        try:
            key = registry.stream_key(task)
        except (ValueError, KeyError, TypeError):
            logger.warning("periodic task %r has unusable kwargs %r", task.name, task.kwargs)
            continue
        if wanted_symbol in (None, key[0]) and wanted_channel in (None, key[1]):
            rows.append((key, task.enabled))
    return rows


def _status_line(sid: str, enabled: bool) -> str:
    try:
        status = read_status(sid)
    except redis.RedisError as exc:
        raise CommandError(f"cannot read the status of {sid} from Redis: {exc}") from exc
    head = f"{sid}\t{'enabled' if enabled else 'disabled'}"
    if status is None:
        return f"{head}\tno status (no task reports this stream)"
    fields = " ".join(f"{name}={_format(getattr(status, name))}" for name in STATUS_FIELDS)
    return f"{head}\t{fields}"


def _format(value: Any) -> str:
    if value is None or value == "":
        return "—"
    return f"{value:.1f}" if isinstance(value, float) else str(value)
