"""Connection attempts and REST request weight of all stream tasks together, within the exchange's
limits per IP.

The exchange allows 300 connection attempts per 5 minutes per IP; a restart storm of hundreds of streams
would exceed it and get the IP banned. Every attempt takes a slot in a sliding window kept in a Redis
sorted set, checked and taken atomically by a script that reads the server's clock (so the workers'
clocks do not matter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio
from django.conf import settings

from streams.binance.rest import BinanceRest
from workers.keys import CONNECTION_BUDGET, REST_WEIGHT
from workers.redis import async_redis

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


# REST request weight (rest-api.md "LIMITS": 6,000 a minute per IP; historicalTrades weighs 25), shared by every
# process and host on the IP: a sliding window on the Redis server's clock (a sorted set of requests, their
# weight in the member), so that no interval of the window's length ever holds more than the budget,
# whatever the alignment of the exchange's own fixed windows. KEYS: the set. ARGV: weight, budget, window ms,
# a unique member. Returns 0 when taken, else the milliseconds until enough weight has left the window.
_TAKE_WEIGHT = """
local now = redis.call('time')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = tonumber(ARGV[3])
redis.call('zremrangebyscore', KEYS[1], '-inf', now_ms - window)
local entries = redis.call('zrange', KEYS[1], 0, -1, 'WITHSCORES')
local used = 0
for i = 1, #entries, 2 do used = used + tonumber(string.match(entries[i], ':(%d+)$')) end
local weight = tonumber(ARGV[1])
if used + weight <= tonumber(ARGV[2]) then
  redis.call('zadd', KEYS[1], now_ms, ARGV[4] .. ':' .. weight)
  redis.call('pexpire', KEYS[1], window)
  return 0
end
-- Wait until the oldest entries whose weight must go have left the window.
local excess = used + weight - tonumber(ARGV[2])
for i = 1, #entries, 2 do
  excess = excess - tonumber(string.match(entries[i], ':(%d+)$'))
  if excess <= 0 then return math.max(1, tonumber(entries[i + 1]) + window - now_ms + 50) end
end
return window
"""
# The exchange's own count (X-MBX-USED-WEIGHT-1M, other clients of the IP included) wins when it is higher
# than what the window holds: the difference is added now. KEYS: the set. ARGV: used, window ms, member.
_NOTE_WEIGHT = """
local now = redis.call('time')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('zremrangebyscore', KEYS[1], '-inf', now_ms - window)
local entries = redis.call('zrange', KEYS[1], 0, -1)
local used = 0
for i = 1, #entries do used = used + tonumber(string.match(entries[i], ':(%d+)$')) end
local missing = tonumber(ARGV[1]) - used
if missing > 0 then
  redis.call('zadd', KEYS[1], now_ms, ARGV[3] .. ':' .. missing)
  redis.call('pexpire', KEYS[1], window)
end
return 1
"""


class RedisWeightBudget:
    """streams.binance.rest.WeightBudget shared through Redis: 200 gaps healed at once, from several
    processes, never draw a 429 or a 418 ban."""

    def __init__(self, client: redis.asyncio.Redis, *, budget: int, window: float = 60.0) -> None:
        self._client = client
        self._budget = budget
        self._window_ms = max(1000, int(window * 1000))
        self._waiting = False

    async def take(self, weight: int) -> float:
        waited = 0.0
        while True:
            wait_ms = int(await self._client.eval(_TAKE_WEIGHT, 1, REST_WEIGHT, weight, self._budget, self._window_ms,
                                                  uuid.uuid4().hex))
            if wait_ms == 0:
                self._waiting = False
                return waited
            if not self._waiting:
                logger.info("REST weight budget of %d per %g s used up; waiting %.1f s", self._budget,
                            self._window_ms / 1000, wait_ms / 1000)
            self._waiting = True
            await asyncio.sleep(wait_ms / 1000)
            waited += wait_ms / 1000

    async def note(self, used: int) -> None:
        await self._client.eval(_NOTE_WEIGHT, 1, REST_WEIGHT, used, self._window_ms, uuid.uuid4().hex)


@contextlib.asynccontextmanager
async def shared_rest(rest_class: type[BinanceRest] = BinanceRest, **options: Any) -> AsyncIterator[Any]:
    """A REST client (of `rest_class`) whose request weight counts against the budget every process shares:
    the audit, the archive fill and the listing check draw from the same window as the streams' gap
    healing, so all of them together stay under the exchange's limit per IP."""
    client = async_redis(max_connections=2)
    try:
        budget = RedisWeightBudget(client, budget=settings.BINANCE_REST_WEIGHT_BUDGET,
                                   window=settings.BINANCE_REST_WEIGHT_WINDOW)
        async with rest_class(settings.BINANCE_REST_URL, budget=budget, **options) as rest:
            yield rest
    finally:
        await client.aclose()
