"""The live page and the status page."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET

from streams.binance.protocol import TRADE


def _url_or_none(name: str) -> str | None:
    try:
        return reverse(name)
    except NoReverseMatch:
        return None


@require_GET
def live(request: HttpRequest) -> HttpResponse:
    """The enabled symbols; the page then asks /api/candles/ for the chosen symbol's day (its candles and latest
    trades) and follows ws/trades/<symbol>/ (trades and the streams' state); the day's completeness from
    /api/coverage/ for those who may see it. Only the enabled streams' names are read here, nothing per stream:
    an anonymous page's cost does not grow with the trades of every enabled stream."""
    from workers.registry import enabled_streams

    channels: dict[str, str] = {}  # per symbol, the stream the page shows: `trade` when it is enabled
    for symbol, channel in enabled_streams():
        channels[symbol] = TRADE if channels.get(symbol) == TRADE else channel
    symbols = sorted(channels)
    config = {
        "symbols": symbols,
        "channels": channels,
        "candles_url": reverse("candles-api"),
        "coverage_url": _url_or_none("coverage-api"),
    }
    return render(request, "web/live.html", {"symbols": symbols, "config": config})


@require_GET
def status(request: HttpRequest) -> HttpResponse:
    from workers.coverage import calendar
    from workers.health import streams_report

    return render(request, "web/status.html", {**streams_report(), "coverage": calendar()})
