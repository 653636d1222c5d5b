"""WebSocket routes."""

from django.urls import re_path

from web.consumers import TradesConsumer

# Channels routes consumers with Django's re_path, whose stubs take Django views only (hence the ignores).
websocket_urlpatterns = [
    re_path(r"^ws/trades/$", TradesConsumer.as_asgi()),  # type: ignore[arg-type]
    re_path(r"^ws/trades/(?P<symbol>[^/]+)/$", TradesConsumer.as_asgi()),  # type: ignore[arg-type]
]
