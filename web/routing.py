"""WebSocket routes."""

from django.urls import re_path

from web.consumers import TradesConsumer

websocket_urlpatterns = [
    re_path(r"^ws/trades/$", TradesConsumer.as_asgi()),
    re_path(r"^ws/trades/(?P<symbol>[^/]+)/$", TradesConsumer.as_asgi()),
]
