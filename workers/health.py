"""What the status endpoints report: each stream's state, the buffer, and whether the service is healthy."""

from __future__ import annotations

import time
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, connection

from workers.buffer import buffer_stats
from workers.keys import BEAT_SEEN
from workers.redis import sync_redis
from workers.status import all_statuses, is_stale

_FIELDS = ("worker", "connected_since", "last_message_age", "last_frame_age", "heartbeat_age", "trades",
           "trades_per_s", "reconnects", "gaps_found", "gaps_healed", "missed", "parse_errors", "lag_ms",
           "connection_wait")


def streams_report() -> dict[str, Any]:
    """Every enabled or running stream, with its live state ("stalled" when its data or heartbeat is stale)."""
    from workers.keys import stream_id
    from workers.registry import enabled_streams

    now = time.time()
    statuses = all_statuses()
    enabled = {stream_id(s, c) for s, c in enabled_streams()}
    streams = []
    for sid in sorted(enabled | set(statuses)):
        status = statuses.get(sid)
        state = "not running" if status is None else ("stalled" if is_stale(status, now) else status["state"])
        entry: dict[str, Any] = {"stream": sid, "enabled": sid in enabled, "state": state}
        entry.update({name: (status or {}).get(name) for name in _FIELDS})
        streams.append(entry)
    return {"streams": streams, "buffer": buffer_stats(sync_redis()), "generated_at": now}


def health_problems() -> list[str]:
    """Why the service is unhealthy; empty when Redis and the database answer and the beat runs."""
    problems = []
    beat_seen: bytes | None = None
    try:
        client = sync_redis()
        client.ping()
        beat_seen = client.get(BEAT_SEEN)
    except (redis.RedisError, OSError) as exc:
        problems.append(f"redis: {type(exc).__name__}: {exc}")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        problems.append(f"database: {type(exc).__name__}: {exc}")
    if not problems:
        limit = max(3 * settings.COLLECTOR_SUPERVISE_INTERVAL, 30.0)
        if beat_seen is None:
            problems.append("beat: no periodic task has run yet")
        elif time.time() - float(beat_seen) > limit:
            problems.append(f"beat: last periodic task ran {time.time() - float(beat_seen):.0f} s ago")
    return problems
