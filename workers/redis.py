"""Redis clients for the workers, from REDIS_URL (one sync pool per process; async clients per loop)."""

from __future__ import annotations

import functools

import redis
import redis.asyncio
from django.conf import settings


@functools.cache
def sync_redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, health_check_interval=30, socket_connect_timeout=5,
                                socket_timeout=10)


def async_redis(max_connections: int | None = None) -> redis.asyncio.Redis:
    """A new asyncio client (bound to the running loop; close it with `aclose()`). With `max_connections`,
    callers beyond it wait for a free connection (redis-py 8's default pool refuses past 100 instead)."""
    if max_connections is None:
        return redis.asyncio.Redis.from_url(settings.REDIS_URL, health_check_interval=30, socket_connect_timeout=5,
                                            socket_timeout=10)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.REDIS_URL, max_connections=max_connections, timeout=30, health_check_interval=30,
        socket_connect_timeout=5, socket_timeout=10)
    return redis.asyncio.Redis(connection_pool=pool)


def text(raw: bytes | str, errors: str = "strict") -> str:
    """A reply as text. The clients here return bytes (no decode_responses), which redis-py's types widen to
    bytes | str."""
    return raw.decode(errors=errors) if isinstance(raw, bytes) else raw
