"""The live page and the status page."""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET

from streams.binance.protocol import TRADE
from streams.broadcast import trade_message
from streams.models import PriceUpdate


def _latest(symbol: str, channel: str, limit: int) -> list[dict[str, object]]:
    """The stream's latest trades, oldest first (its ids follow trade time: the index walks them)."""
    rows = PriceUpdate.objects.filter(ticker_symbol=symbol, channel=channel).order_by("-trade_id")[:limit]
    return [trade_message(row.as_trade()) for row in reversed(rows)]


_DAY_OPENS: dict[tuple[str, str, str], str] = {}  # (symbol, channel, UTC day) -> price; found once per process


def _day_open(symbol: str, channel: str) -> str | None:
    """The price of the stream's first stored trade of the UTC day (the day's change is against it)."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    key = (symbol, channel, midnight.date().isoformat())
    if key not in _DAY_OPENS:
        first = (PriceUpdate.objects.filter(ticker_symbol=symbol, channel=channel, trade_time__gte=midnight)
                 .order_by("trade_time", "trade_id").values_list("price", flat=True).first())
        if first is None:
            return None  # nothing stored today yet: the page takes the day's first live trade
        if len(_DAY_OPENS) > 10_000:  # days gone by
            _DAY_OPENS.clear()
        _DAY_OPENS[key] = f"{first:f}"
    return _DAY_OPENS[key]


def _url_or_none(name: str) -> str | None:
    try:
        return reverse(name)
    except NoReverseMatch:
        return None


@require_GET
def live(request: HttpRequest) -> HttpResponse:
    """Each enabled symbol, opening with its latest stored trades and the day's first price, then live over
    ws/trades/<symbol>/ (trades and the streams' state); the day's completeness from /api/coverage/ for
    those who may see it."""
    from workers.registry import enabled_streams

    channels: dict[str, str] = {}  # per symbol, the stream the page shows: `trade` when it is enabled
    for sid in enabled_streams():
        channels[sid.symbol] = TRADE if channels.get(sid.symbol) == TRADE else sid.channel
    symbols = sorted(channels)
    config = {
        "symbols": symbols,
        "channels": channels,
        "initial": {s: _latest(s, channels[s], settings.LIVE_PAGE_TRADES) for s in symbols},
        "day_open": {s: _day_open(s, channels[s]) for s in symbols},
        "coverage_url": _url_or_none("coverage-api"),
    }
    return render(request, "web/live.html", {"symbols": symbols, "config": config})


@require_GET
def status(request: HttpRequest) -> HttpResponse:
    from workers.coverage import calendar
    from workers.health import streams_report

    return render(request, "web/status.html", {**streams_report(), "coverage": calendar()})
