"""Each stream's live status in Redis (written by its task's heartbeat, read by the supervisor and pages)."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio
from django.conf import settings

from workers.keys import PREFIX, status_key
from workers.redis import sync_redis

_NUMBERS = ("connected_since", "last_message_at", "last_frame_at", "updated_at", "trades", "trades_per_s",
            "messages", "reconnects", "gaps_found", "gaps_healed", "missed", "parse_errors", "lag_ms",
            "buffer_trades", "connection_wait")


async def write_status(client: redis.asyncio.Redis, sid: str, fields: dict[str, Any], ttl: float) -> None:
    """Replace the stream's status; it expires if the heartbeat stops (a dead task leaves no false status)."""
    key = status_key(sid)
    values = {name: "" if value is None else str(value) for name, value in fields.items()}
    values["updated_at"] = f"{time.time():.3f}"
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=values)
        pipe.pexpire(key, int(ttl * 1000))
        await pipe.execute()


def read_status(sid: str, now: float | None = None) -> dict[str, Any] | None:
    """The status of stream `sid` with derived ages in seconds, or None if no task reports it."""
    raw = sync_redis().hgetall(status_key(sid))
    if not raw:
        return None
    return _decode(raw, time.time() if now is None else now)


def all_statuses() -> dict[str, dict[str, Any]]:
    client = sync_redis()
    now = time.time()
    found = {}
    for key in client.scan_iter(match=f"{PREFIX}:status:*", count=500):
        raw = client.hgetall(key)
        if raw:
            found[key.decode().rsplit(":", 1)[-1]] = _decode(raw, now)
    return found


def is_stale(status: dict[str, Any] | None, now: float | None = None) -> bool:
    """A status nobody renews, or a connection that delivers no frame at all, for COLLECTOR_STALE_AFTER.

    A quiet market still shows frames: the client probes a silent connection (LIST_SUBSCRIPTIONS)."""
    if status is None:
        return True
    limit = settings.COLLECTOR_STALE_AFTER
    now = time.time() if now is None else now
    if now - float(status.get("updated_at") or 0) > limit:
        return True
    last_frame = status.get("last_frame_at")
    return status.get("state") == "connected" and bool(last_frame) and now - float(last_frame) > limit


def _decode(raw: dict[bytes, bytes], now: float) -> dict[str, Any]:
    status: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    for name in _NUMBERS:
        value = status.get(name)
        if value not in (None, ""):
            status[name] = float(value)
        else:
            status[name] = None
    for name, age in (("last_message_at", "last_message_age"), ("updated_at", "heartbeat_age"),
                      ("last_frame_at", "last_frame_age")):
        status[age] = None if status.get(name) is None else max(0.0, now - status[name])
    return status
