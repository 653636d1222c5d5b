"""ASGI entry point: Django for HTTP, Channels for WebSockets (origin checked against ALLOWED_HOSTS), and
the lifespan that stops the live hub."""

import os

from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

django_asgi_app = get_asgi_application()

from web.live.hub import lifespan  # noqa: E402 - needs Django set up first
from web.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    # The routes are Django URL patterns of consumers, which URLRouter's stubs type as their own kind.
    "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),  # type: ignore[arg-type]
    "lifespan": lifespan,  # at shutdown the live hub closes its pages and leaves the channel-layer group
})
