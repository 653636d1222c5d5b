"""One owner per stream: a lease in Redis with a TTL, renewed by the heartbeat.

The one place for the lease scripts. A lease is renewed or released only by the owner that holds it: a
compare-and-set on the server, one script for any number of leases (the runtime renews every lease of its
process in one round trip, and releases those of the streams it stops in another).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio

from workers.keys import StreamId, lease_key

# KEYS: the leases. ARGV: per lease its owner, then its TTL in ms. 1 for each still ours (renewed), 0 if not.
_RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[2 * i - 1] then
    redis.call('pexpire', key, ARGV[2 * i]); out[i] = 1
  else out[i] = 0 end
end
return out
"""
# KEYS: the leases. ARGV: per lease its owner. Deletes those still ours.
_RELEASE = """
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then redis.call('del', key) end
end
return 1
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
        return (await renew_leases(self._client, [self]))[0]

    async def release(self) -> None:
        await release_leases(self._client, [self])


async def renew_leases(client: redis.asyncio.Redis, leases: Sequence[Lease]) -> list[bool]:
    """Renew `leases` in one step: for each, whether it is still its owner's (renewed) or not (lost)."""
    if not leases:
        return []
    args = [value for lease in leases for value in (lease.owner, lease.ttl_ms)]
    owned = await client.eval(_RENEW, len(leases), *(lease.key for lease in leases), *args)
    return [bool(ours) for ours in owned]


async def release_leases(client: redis.asyncio.Redis, leases: Sequence[Lease]) -> None:
    """Release those of `leases` that their owners still hold, in one step."""
    if leases:
        await client.eval(_RELEASE, len(leases), *(lease.key for lease in leases), *(lease.owner for lease in leases))
