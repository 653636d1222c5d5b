"""Connection attempts of all stream tasks together, within the exchange's limit per IP.

The exchange allows 300 connection attempts per 5 minutes per IP; a restart storm of hundreds of streams
would exceed it and get the IP banned. Every attempt takes a slot in a sliding window kept in a Redis
sorted set, checked and taken atomically by a script that reads the server's clock (so the workers'
clocks do not matter).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import redis.asyncio

from workers.keys import CONNECTION_BUDGET

logger = logging.getLogger(__name__)

# Returns 0 when a slot was taken, else the milliseconds until the oldest attempt leaves the window.
_TAKE_SLOT = """
local now = redis.call('time')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('zremrangebyscore', KEYS[1], '-inf', now_ms - window)
if redis.call('zcard', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('zadd', KEYS[1], now_ms, ARGV[3])
  redis.call('pexpire', KEYS[1], window)
  return 0
end
local oldest = redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now_ms)
"""


async def take_connection_slot(client: redis.asyncio.Redis, *, limit: int, window: float,
                               on_wait: Callable[[float], None] | None = None) -> float:
    """Wait until the shared budget allows one more connection attempt and take it; seconds waited."""
    waited = 0.0
    member = uuid.uuid4().hex
    while True:
        wait_ms = int(await client.eval(_TAKE_SLOT, 1, CONNECTION_BUDGET, int(window * 1000), limit, member))
        if wait_ms == 0:
            return waited
        delay = min(wait_ms / 1000, window)
        if on_wait is not None:
            on_wait(delay)
        logger.info("connection budget of %d per %.0f s used up; waiting %.1f s", limit, window, delay)
        await asyncio.sleep(delay)
        waited += delay
