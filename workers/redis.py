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


def async_redis() -> redis.asyncio.Redis:
    """A new asyncio client (bound to the running loop; close it with `aclose()`)."""
    return redis.asyncio.Redis.from_url(settings.REDIS_URL, health_check_interval=30, socket_connect_timeout=5,
                                        socket_timeout=10)
