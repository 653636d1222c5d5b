"""Status endpoints: /api/streams/ and /api/coverage/ (JSON), /healthz, /metrics (Prometheus text).

/api/streams/, /api/coverage/ and /metrics are internal (web.access): staff or the metrics token; /healthz is open
and says only what is down.
"""

from __future__ import annotations

from datetime import date

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
    contract in workers.coverage.day_entry), as the audit last computed them."""
    from streams.binance.errors import InvalidStreamName
    from streams.binance.protocol import normalize_channel, normalize_symbol
    from workers.coverage import coverage_rows
    from workers.seal import coverage_entries

    params = request.GET
    try:
        symbol = normalize_symbol(params["symbol"]) if params.get("symbol") else None
        channel = normalize_channel(params["channel"]) if params.get("channel") else None
        first, last = (date.fromisoformat(params[k]) if params.get(k) else None for k in ("from", "to"))
    except (InvalidStreamName, ValueError) as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"days": coverage_entries(coverage_rows(symbol, channel, first, last))})


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    problems = health_problems()
    return JsonResponse({"ok": not problems, "problems": problems}, status=503 if problems else 200)


@require_GET
@internal()
def metrics(request: HttpRequest) -> HttpResponse:
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
