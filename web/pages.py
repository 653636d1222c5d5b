"""The live page and the status page."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET

from streams.binance.protocol import TRADE
from web.access import may_see_internals


def _url_or_none(name: str) -> str | None:
    try:
        return reverse(name)
    except NoReverseMatch:
        return None


LIVE_PAGE_SYMBOLS = 40  # symbols the live page shows as buttons; any other enabled one is chosen by name
_ENABLED: tuple[float, dict[str, str]] = (0.0, {})  # (monotonic time read, symbol -> channel), this process's


def enabled_channels() -> dict[str, str]:
    """Per enabled symbol, the stream the live page shows (`trade` when it is enabled): read at most once per
    LIVE_CANDLES_CACHE seconds per process, so that an anonymous page's cost does not grow with the number of
    enabled streams (thousands of them made each request read and parse every stream's task)."""
    global _ENABLED  # noqa: PLW0603 - this process's short-lived copy
    read_at, channels = _ENABLED
    if time.monotonic() - read_at < settings.LIVE_CANDLES_CACHE and read_at:
        return channels
    from workers.registry import enabled_streams

    channels = {}
    for sid in enabled_streams():
        channels[sid.symbol] = TRADE if channels.get(sid.symbol) == TRADE else sid.channel
    _ENABLED = (time.monotonic(), channels)
    return channels


def forget_enabled() -> None:
    """Read the enabled streams afresh at the next request (tests; a process that enabled streams itself)."""
    global _ENABLED  # noqa: PLW0603
    _ENABLED = (0.0, {})


@require_GET
def live(request: HttpRequest) -> HttpResponse:
    """The live page: the chosen symbol (`?symbol=`, or the first) and a bounded choice of others; the page then
    asks /api/candles/ for the chosen symbol's day (its candles and latest trades) and follows ws/trades/<symbol>/
    (trades and the streams' state); the day's completeness from /api/coverage/ for those who may see it. What
    a request costs does not grow with the number of enabled streams: their names are read once per few seconds
    per process, and the page carries LIVE_PAGE_SYMBOLS of them."""
    channels = enabled_channels()
    everything = sorted(channels)
    asked = (request.GET.get("symbol") or "").strip().upper()
    chosen = asked if asked in channels else (everything[0] if everything else None)
    shown = everything[:LIVE_PAGE_SYMBOLS]
    if chosen is not None and chosen not in shown:
        shown = [chosen, *shown[:LIVE_PAGE_SYMBOLS - 1]]
    symbols = shown
    config = {
        "symbols": symbols,
        "chosen": chosen,
        "enabled": len(everything),
        "channels": {symbol: channels[symbol] for symbol in symbols},
        "candles_url": reverse("candles-api"),
        "coverage_url": _url_or_none("coverage-api"),
    }
    may_see_status = may_see_internals(request, public=settings.STATUS_PUBLIC)
    return render(request, "web/live.html", {"symbols": symbols, "config": config, "may_see_status": may_see_status,
                                             "more": max(0, len(everything) - len(symbols)), "chosen": chosen})


def _count(value: Any) -> str:
    return f"{value:,}" if value else "—"


def _seconds(value: Any) -> str:
    return "—" if value is None or value == "" else f"{value:,.1f}"


def _millis(value: Any) -> str:
    return "—" if value is None or value == "" else f"{value:,}"


def _text(value: Any) -> str:
    return str(value) if value not in (None, "") else "—"


def _worker(value: Any) -> str:
    """`host:pid` of the owner `host:pid:task id` (the whole of it is the cell's tooltip)."""
    host, _, task = str(value or "").rpartition(":")
    return host if host and len(task) >= 32 else _text(value)


@dataclass(frozen=True)
class Column:
    """A column of the status page's streams table: its heading, what it means (the heading's tooltip and the
    legend say it), how a value reads, and its kind: `number` (right-aligned), `name` or `words` (wrapped)."""

    key: str
    heading: str
    meaning: str
    shown: Callable[[Any], str] = _count
    kind: str = "number"


STATUS_COLUMNS = (
    Column("stream", "stream", "The stream's name on the exchange: symbol@channel (trade or aggTrade).", _text, "name"),
    Column("enabled", "enabled", "Whether the stream is enabled (in the admin, or manage.py streams enable).",
           lambda value: "yes" if value else "no", "name"),
    Column("state", "state", "What its task does: connected; connecting or backoff (waiting to reconnect); stalled "
           "(its data, heartbeat or progress is late: the supervisor restarts it); not running (enabled, no task "
           "runs it yet).", _text, "name"),
    Column("worker", "worker", "The streams worker that hosts its task: host and process (hover for the task id).",
           _worker, "name"),
    Column("last_trade_age", "last trade (s)", "Seconds since its last live trade arrived (a quiet market trades "
           "rarely).", _seconds),
    Column("trades_per_s", "trades/s", "Trades handed to the buffer per second, on average since its task started.",
           _seconds),
    Column("reconnects", "reconnects", "Times its task connected to the exchange again (after a drop, a silence, "
           "the 24-hour rotation)."),
    Column("gaps_found", "gaps found", "Jumps in the trade ids that its task saw: trades the connection did not "
           "deliver, fetched from the exchange's REST API."),
    Column("gaps_healed", "gaps healed", "Of those gaps, the ones filled from the REST API."),
    Column("missed", "missed", "Trade ids its task gave up (beyond the backfill window, or REST failed): the audit "
           "finds and fills them later."),
    Column("ids_back", "ids back", "Live trades whose id was not above the last one seen (a replay after a reconnect, "
           "or an exchange reset): never stored twice; the audit checks them."),
    Column("parse_errors", "parse errors", "Frames that could not be read as trades: skipped and kept as dead "
           "letters."),
    Column("errors", "errors", "Transient errors its task met and retried (Redis, the REST API)."),
    Column("task_failures", "task failures", "Its tasks that ended with an error, over all time (the supervisor "
           "started new ones)."),
    Column("lag_ms", "lag (ms)", "From the exchange's time of its last trade to the trade's arrival here.", _millis),
)
# Under its stream's row, across the table: a message is too long for a column.
ERROR_LINE = Column("last_error", "last error", "Under a stream's row: the last error its task met, or why its last "
                    "task failed.", _text, "words")


def _row(stream: dict[str, Any]) -> dict[str, Any]:
    cells = [{"text": column.shown(stream.get(column.key)), "kind": column.kind,
              "title": stream.get(column.key) if column.key == "worker" else ""} for column in STATUS_COLUMNS]
    return {"state": stream["state"], "cells": cells, "error": stream.get("last_error") or stream.get("last_failure")}


@require_GET
def status(request: HttpRequest) -> HttpResponse:
    from workers.coverage import calendar
    from workers.health import streams_report

    report = streams_report()
    return render(request, "web/status.html", {
        **report, "coverage": calendar(), "columns": STATUS_COLUMNS, "legend": [*STATUS_COLUMNS, ERROR_LINE],
        "rows": [_row(stream) for stream in report["streams"]]})
