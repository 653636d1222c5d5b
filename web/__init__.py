"""The web side: the live page, its WebSocket and live hub, the status page and endpoints, URLs and ASGI."""
