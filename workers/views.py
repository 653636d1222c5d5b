"""Status endpoints: /api/streams/ (JSON), /healthz, /metrics (Prometheus text)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from workers.health import health_problems, streams_report
from workers.metrics import render


@require_GET
def streams_api(request: HttpRequest) -> JsonResponse:
    return JsonResponse(streams_report())


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    problems = health_problems()
    return JsonResponse({"ok": not problems, "problems": problems}, status=503 if problems else 200)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
