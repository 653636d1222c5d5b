"""One owner per stream: a lease in Redis with a TTL, renewed by the heartbeat (DESIGN.md promise 3)."""

from __future__ import annotations

import redis.asyncio

from workers.keys import StreamId, lease_key

# Renew or release only a lease we still own: a compare-and-set in one step on the server.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class Lease:
    """The lease of stream `sid` for `owner`; `ttl` seconds unless renewed."""

    def __init__(self, client: redis.asyncio.Redis, sid: StreamId, owner: str, ttl: float) -> None:
        self.key = lease_key(sid)
        self.owner = owner
        self.ttl_ms = int(ttl * 1000)
        self._client = client

    async def acquire(self) -> bool:
        return bool(await self._client.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    async def renew(self) -> bool:
        """False once the lease is gone or someone else holds it: the task must stop."""
        return bool(await self._client.eval(_RENEW, 1, self.key, self.owner, self.ttl_ms))

    async def release(self) -> None:
        await self._client.eval(_RELEASE, 1, self.key, self.owner)
