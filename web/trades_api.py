"""/api/trades/: the dataset's rows over HTTP, streamed (CSV, NDJSON or Parquet), for staff or the metrics token.

`?symbol=BTCUSDT&from=2026-11-01&to=2026-11-02[&channel=trade][&market=spot][&format=csv|ndjson|parquet]`:
the rows of `streams.dataset.trades` in [from, to) (`to` defaults to now), at most DATASET_API_MAX_DAYS days
per request (longer ranges: `manage.py trades` or `export_trades`, which have no such bound). Bad input is a
400 with `{"error": "..."}` naming the problem.

Parquet is streamed too: its row groups are written front to back and only the footer comes last, so each
day part goes out as its row groups are made (streams.formats), with no temporary file and no memory beyond
a row group; a response cut short has no footer, which every Parquet reader refuses, where a spooled file
would have cost a disk write and a full read before the first byte.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.http import HttpRequest, JsonResponse, QueryDict
from django.http.response import HttpResponseBase
from django.views.decorators.http import require_GET

from streams import dataset, formats
from streams.binance.protocol import TRADE
from web.access import may_see_internals, refused
from web.streaming import streamed


def selection_of(params: QueryDict) -> dataset.Selection:
    """The stream and range a request names (`symbol`, `from`, `to`, `channel`, `market`); DatasetError."""
    symbol, first, last = params.get("symbol"), params.get("from"), params.get("to")
    if not symbol:
        raise dataset.DatasetError("symbol is missing (?symbol=BTCUSDT)")
    if not first:
        raise dataset.DatasetError("from is missing (?from=2026-11-01, ISO 8601)")
    start = dataset.moment(first, "from")
    end = dataset.moment(last, "to") if last else None
    if end is not None and end < start:
        raise dataset.DatasetError(f"to {last} is before from {first}")
    return dataset.Selection.of(symbol, start, end, params.get("channel") or TRADE, params.get("market") or "spot")


def within_limit(selection: dataset.Selection, setting: str) -> None:
    """DatasetError when the selection spans more days than the setting allows."""
    limit: int = getattr(settings, setting)
    if selection.end - selection.start > timedelta(days=limit):
        span = (selection.end - selection.start) / timedelta(days=1)
        raise dataset.DatasetError(f"from..to spans {span:.1f} days; {setting}={limit} days at most per request "
                                   "(manage.py trades and export_trades read any range)")


@require_GET
def trades_api(request: HttpRequest) -> HttpResponseBase:
    if not may_see_internals(request, public=False):  # STATUS_PUBLIC does not open the dataset
        return refused()
    fmt = request.GET.get("format") or "csv"
    try:
        if fmt not in formats.FORMATS:
            raise dataset.DatasetError(f"unknown format {fmt!r}; expected one of {', '.join(formats.FORMATS)}")
        selection = selection_of(request.GET)
        within_limit(selection, "DATASET_API_MAX_DAYS")
    except dataset.DatasetError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    response = streamed(request, formats.encode(dataset.day_tables(selection), fmt), formats.MEDIA_TYPES[fmt])
    response["Content-Disposition"] = f'attachment; filename="{download_name(selection, fmt)}"'
    return response


def download_name(selection: dataset.Selection, fmt: str) -> str:
    def stamp(moment: datetime) -> str:
        return f"{moment:%Y%m%dT%H%M%SZ}"

    return (f"{selection.market}-{selection.symbol}-{selection.channel}-{stamp(selection.start)}-"
            f"{stamp(selection.end)}{formats.SUFFIXES[fmt]}")
