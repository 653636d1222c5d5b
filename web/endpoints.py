"""Status endpoints: /api/streams/ and /api/coverage/ (JSON), /healthz, /metrics (Prometheus text).

/api/streams/, /api/coverage/ and /metrics are internal (web.access): staff or the metrics token; /healthz is open
and says only what is down.
"""

from __future__ import annotations

from datetime import date, timedelta

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from web.access import internal
from workers.health import health_problems, streams_report
from workers.metrics import render


@require_GET
@internal(public_setting="STATUS_PUBLIC")
def streams_api(request: HttpRequest) -> JsonResponse:
    return JsonResponse(streams_report())


@require_GET
@internal(public_setting="STATUS_PUBLIC")
def coverage_api(request: HttpRequest) -> JsonResponse:
    """`?symbol=BTCUSDT&channel=trade&from=YYYY-MM-DD&to=YYYY-MM-DD` (each optional): {"days": [...]} (the
    contract in workers.coverage.day_entry), as the audit last computed them. Bounded: `to` defaults to today
    (UTC) and `from` to the status calendar's days before it, and a range spans COVERAGE_API_MAX_DAYS days at
    most (every day of every stream at once was 53 MB on a collector of a few hundred streams)."""
    from streams.binance.errors import InvalidStreamName
    from streams.binance.protocol import normalize_channel, normalize_symbol
    from workers.coverage import CALENDAR_DAYS, coverage_rows, utc_today
    from workers.seal import coverage_entries

    params = request.GET
    try:
        symbol = normalize_symbol(params["symbol"]) if params.get("symbol") else None
        channel = normalize_channel(params["channel"]) if params.get("channel") else None
        last = date.fromisoformat(params["to"]) if params.get("to") else utc_today()
        first = date.fromisoformat(params["from"]) if params.get("from") else last - timedelta(days=CALENDAR_DAYS - 1)
    except (InvalidStreamName, ValueError) as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    limit: int = settings.COVERAGE_API_MAX_DAYS
    if last < first:
        return JsonResponse({"error": f"to {last} is before from {first}"}, status=400)
    if (last - first).days + 1 > limit:
        return JsonResponse({"error": f"from {first} to {last} spans {(last - first).days + 1} days; "
                                      f"COVERAGE_API_MAX_DAYS={limit} days at most per request"}, status=400)
    return JsonResponse({"days": coverage_entries(coverage_rows(symbol, channel, first, last))})


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    problems = health_problems()
    return JsonResponse({"ok": not problems, "problems": problems}, status=503 if problems else 200)


@require_GET
@internal()
def metrics(request: HttpRequest) -> HttpResponse:
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
