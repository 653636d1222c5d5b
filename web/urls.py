"""URL routes."""

from django.contrib import admin
from django.urls import path

from web import endpoints as views
from web import pages
from web.access import internal
from web.candles import candles_api
from web.trades_api import trades_api

urlpatterns = [
    path("", pages.live, name="live"),
    path("status/", internal(html=True, public_setting="STATUS_PUBLIC")(pages.status), name="status"),
    path("admin/", admin.site.urls),
    path("api/streams/", views.streams_api, name="streams-api"),
    path("api/coverage/", views.coverage_api, name="coverage-api"),
    path("api/trades/", trades_api, name="trades-api"),
    path("api/candles/", candles_api, name="candles-api"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
]
