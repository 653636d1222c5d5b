"""The live page and the status page."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from streams.broadcast import trade_message
from streams.models import PriceUpdate


def _latest(symbol: str, limit: int) -> list[dict[str, object]]:
    rows = PriceUpdate.objects.filter(ticker_symbol=symbol).order_by("-trade_time", "-trade_id")[:limit]
    return [trade_message(row.as_trade()) for row in reversed(rows)]


@require_GET
def live(request: HttpRequest) -> HttpResponse:
    """Each enabled symbol, opening with its latest stored trades, then live over ws/trades/<symbol>/."""
    from workers.registry import enabled_streams

    symbols = sorted({symbol for symbol, _ in enabled_streams()})
    initial = {symbol: _latest(symbol, settings.LIVE_PAGE_TRADES) for symbol in symbols}
    return render(request, "streams/live.html", {"symbols": symbols, "initial": initial})


@require_GET
def status(request: HttpRequest) -> HttpResponse:
    from workers.health import streams_report

    return render(request, "streams/status.html", streams_report())
