"""`manage.py streams enable|disable|list|status|check`: the symbol streams, one or every listed symbol at once.

    streams enable btcusdt ethusdt [--channel aggTrade]   named symbols, checked with one exchangeInfo call
    streams enable --all [--quote USDT] [--channel ...]   every trading symbol the exchange lists (one call)
    streams disable btcusdt ethusdt | --all [--channel ...]
    streams list|status [SYMBOL ...] [--channel ...]      status: live, from Redis
    streams check                                         which enabled symbols do not trade now (one call)
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams.binance.errors import InvalidStreamName, StreamError
from streams.binance.protocol import CHANNELS, TRADE, normalize_channel, normalize_symbol
from workers import listing, registry
from workers.keys import StreamId, stream_id
from workers.status import read_status

logger = logging.getLogger(__name__)

ACTIONS = ("enable", "disable", "list", "status", "check")
STATUS_FIELDS = ("state", "worker", "connected_for", "last_trade_age", "heartbeat_age", "stuck_for", "trades_per_s",
                 "reconnects", "gaps_found", "gaps_healed", "missed", "ids_back", "parse_errors", "errors", "lag_ms",
                 "last_error")
NOTHING = "no symbol streams (add one with `streams enable SYMBOL`)"


class Command(BaseCommand):
    help = "Enable or disable symbol streams (named, or every trading symbol), list them, or show their status."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=ACTIONS)
        parser.add_argument("symbols", nargs="*", metavar="SYMBOL", help="The exchange's symbols, like BTCUSDT.")
        parser.add_argument("--channel", action="append", default=None,
                            help=f"One of {', '.join(CHANNELS)} (default {TRADE}); repeat it for both.")
        parser.add_argument("--all", action="store_true", dest="every",
                            help="enable: every symbol the exchange trades now; disable: every stream.")
        parser.add_argument("--quote", action="append", default=None,
                            help="With enable --all: only symbols quoted in this asset, like USDT (repeatable).")
        parser.add_argument("--yes", action="store_true",
                            help="With enable: go ahead when more than STREAMS_ENABLE_CONFIRM_ABOVE streams would "
                                 "be enabled (without it the command asks on a terminal, and refuses elsewhere)")

    def handle(self, *args: Any, action: str, symbols: list[str], channel: list[str] | None, every: bool,
               quote: list[str] | None, **options: Any) -> None:
        self.yes = bool(options.get("yes"))
        if every and symbols:
            raise CommandError(f"`streams {action}` takes SYMBOLs or --all, not both")
        if every and action not in ("enable", "disable"):
            raise CommandError(f"--all is for enable and disable, not {action}")
        if quote and not (every and action == "enable"):
            raise CommandError("--quote goes with `streams enable --all`")
        try:
            channels = [normalize_channel(c) for c in dict.fromkeys(channel)] if channel else None
            getattr(self, f"handle_{action}")([normalize_symbol(s) for s in dict.fromkeys(symbols)], channels,
                                              every=every, quotes=quote)
        except InvalidStreamName as exc:
            raise CommandError(str(exc)) from exc

    def handle_enable(self, symbols: list[str], channels: list[str] | None, *, every: bool,
                      quotes: list[str] | None) -> None:
        if not symbols and not every:
            raise CommandError("`streams enable` needs a SYMBOL, like BTCUSDT (or several), or --all")
        channels = channels or [TRADE]
        unusable: dict[str, str] = {}
        try:
            if every:
                chosen = listing.trading_symbols(quotes)
                trading, skipped, unusable = chosen.trading, chosen.not_trading, chosen.unusable
                if not trading and not skipped:
                    raise CommandError(f"the exchange lists no symbol quoted in {', '.join(quotes or [])}")
            else:
                trading, skipped = _named(symbols, "enable")
        except StreamError as exc:  # the exchange could not answer, or answered nonsense
            raise CommandError(f"cannot enable {_what(symbols, every)}: {exc}") from exc
        wanted = [stream_id(s, c) for s in trading for c in channels]
        self._confirm(len(wanted) - len(set(wanted) & set(registry.enabled_streams())))
        changes = registry.enable_streams(wanted)
        line = registry.summary("enabled", changes, skipped if every else None)
        if unusable:
            names = ", ".join(repr(name) for name in list(unusable)[:10]) + (", ..." if len(unusable) > 10 else "")
            line = (f"{line.rstrip()}; {len(unusable):,} name{'' if len(unusable) == 1 else 's'} the collector "
                    f"cannot take skipped: {names}\n")
            for name, why in unusable.items():
                logger.warning("enable --all: skipped %r: %s", name, why)
        self.stdout.write(line)

    def _confirm(self, count: int) -> None:
        """Enabling many streams at once is asked for, above STREAMS_ENABLE_CONFIRM_ABOVE: every one is a
        connection's share, REST weight to heal it and rows to store, and a typo in --quote can mean thousands."""
        limit = settings.STREAMS_ENABLE_CONFIRM_ABOVE
        if count <= limit or self.yes:
            return
        question = f"would enable {count:,} streams, more than STREAMS_ENABLE_CONFIRM_ABOVE={limit}"
        if not sys.stdin.isatty():
            raise CommandError(f"{question}: run it again with --yes")
        answer = input(f"{question}. Enable them? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            raise CommandError("nothing enabled")

    def handle_disable(self, symbols: list[str], channels: list[str] | None, *, every: bool, **_: Any) -> None:
        if every:
            changes = registry.disable_all(channels)
        else:
            if not symbols:
                raise CommandError("`streams disable` needs a SYMBOL, like BTCUSDT (or several), or --all")
            keys = [stream_id(s, c) for s in symbols for c in channels or [TRADE]]
            known = set(registry.stream_tasks().filter(name__in=[registry.task_name(k) for k in keys])
                        .values_list("name", flat=True))
            missing = [str(k) for k in keys if registry.task_name(k) not in known]
            if missing:
                raise CommandError(f"no stream {', '.join(missing)}: `streams list` shows the known ones")
            changes = registry.disable_streams(keys)
        if not changes.done and not changes.already:
            self.stdout.write(NOTHING)
            return
        self.stdout.write(registry.summary("disabled", changes))

    def handle_list(self, symbols: list[str], channels: list[str] | None, **_: Any) -> None:
        rows = _selected(symbols, channels)
        stopped = _not_trading()
        for sid, enabled in rows:
            self.stdout.write(f"{sid}\t{'enabled' if enabled else 'disabled'}{_mark(sid.symbol, stopped)}")
        if not rows:
            self.stdout.write(NOTHING)

    def handle_status(self, symbols: list[str], channels: list[str] | None, **_: Any) -> None:
        rows = _selected(symbols, channels)
        if symbols and not rows:
            raise CommandError(f"no stream for {', '.join(symbols)}: `streams list` shows the known ones")
        stopped = _not_trading()
        for sid, enabled in rows:
            self.stdout.write(_status_line(sid, enabled, _mark(sid.symbol, stopped)))
        if not rows:
            self.stdout.write(NOTHING)

    def handle_check(self, symbols: list[str], channels: list[str] | None, **_: Any) -> None:
        if symbols or channels:
            raise CommandError("`streams check` checks every enabled symbol; it takes no SYMBOL or --channel")
        try:
            stopped = listing.check_trading()
        except StreamError as exc:
            raise CommandError(f"cannot ask the exchange: {exc}") from exc
        checked = len(registry.enabled_symbols())
        if not stopped:
            self.stdout.write(f"{checked:,} enabled symbols checked: every one trades")
            return
        names = ", ".join(f"{s} ({status})" for s, status in sorted(stopped.items()))
        self.stdout.write(f"{checked:,} enabled symbols checked; {len(stopped):,} not trading (kept enabled): {names}")


def _named(symbols: list[str], action: str) -> tuple[list[str], dict[str, str]]:
    """The named symbols if the exchange lists each and each trades; else an error naming every one that does
    not (nothing is enabled): a person named them, a typo must not pass."""
    named = listing.check_named(symbols)
    problems = [f"{s}: not listed on the exchange" for s in named.unknown]
    problems += [f"{s}: not trading (status {status})" for s, status in named.not_trading.items()]
    if problems:
        raise CommandError(f"cannot {action} {', '.join(symbols)}: {'; '.join(problems)}")
    return named.trading, {}


def _what(symbols: list[str], every: bool) -> str:
    return "every trading symbol" if every else ", ".join(symbols)


def _selected(symbols: list[str], channels: list[str] | None) -> list[tuple[StreamId, bool]]:
    """(stream, enabled) of the streams matching the optional symbols and channels."""
    rows = []
    for task in registry.stream_tasks():
        try:
            key = registry.stream_key(task)
        except (ValueError, KeyError, TypeError):
            logger.warning("periodic task %r has unusable kwargs %r", task.name, task.kwargs)
            continue
        if (not symbols or key.symbol in symbols) and (not channels or key.channel in channels):
            rows.append((key, task.enabled))
    return rows


def _not_trading() -> dict[str, str]:
    """The marks of the last listing check; without Redis, none (the list itself is in the database)."""
    try:
        return listing.not_trading()
    except redis.RedisError as exc:
        logger.warning("cannot read which symbols are not trading from Redis: %s", exc)
        return {}


def _mark(symbol: str, stopped: dict[str, str]) -> str:
    return f"\tnot trading ({stopped[symbol]})" if symbol in stopped else ""


def _status_line(sid: StreamId, enabled: bool, mark: str) -> str:
    try:
        status = read_status(sid)
    except redis.RedisError as exc:
        raise CommandError(f"cannot read the status of {sid} from Redis: {exc}") from exc
    head = f"{sid}\t{'enabled' if enabled else 'disabled'}{mark}"
    if status is None:
        return f"{head}\tno status (no task reports this stream)"
    fields = " ".join(f"{name}={_format(getattr(status, name))}" for name in STATUS_FIELDS)
    return f"{head}\t{fields}"


def _format(value: Any) -> str:
    if value is None or value == "":
        return "—"
    return f"{value:.1f}" if isinstance(value, float) else str(value)
