"""What the status endpoints report: each stream's state, the buffer, and whether the service is healthy."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, connection

from workers.buffer import buffer_stats
from workers.deadletters import dead_letter_total, recent_dead_letters
from workers.keys import BEAT_SEEN, FAILURES, PERIODIC_ERRORS, StreamId, last_failure_key
from workers.listing import not_trading
from workers.redis import sync_redis, text
from workers.status import StreamStatus, all_statuses, server_time, shown_state
from workers.store import refused_counts

logger = logging.getLogger(__name__)


def streams_report(dead_letters: int = 10) -> dict[str, Any]:
    """Every enabled or running stream with its live status ("stalled" when its data, heartbeat or
    progress is stale; "not running" when enabled without a task), failures of its past tasks, the
    buffer, the dead letters and the periodic tasks' transient errors."""
    from workers.registry import enabled_streams

    client = sync_redis()
    statuses = all_statuses()
    enabled = set(enabled_streams())
    failures = {text(k): int(v) for k, v in client.hgetall(FAILURES).items()}
    listing = not_trading(client)
    streams = []
    for sid in sorted(enabled | set(statuses)):
        status = statuses.get(sid)
        state = shown_state(status)
        entry: dict[str, Any] = {**(status or StreamStatus(state="")).as_dict(), "stream": str(sid),
                                 "enabled": sid in enabled, "state": state,
                                 "task_failures": failures.get(str(sid), 0), "last_failure": _last_failure(sid),
                                 "exchange_status": listing.get(sid.symbol, "TRADING")}
        streams.append(entry)
    return {
        "streams": streams,
        "buffer": buffer_stats(client),
        "dead_letters": {"total": dead_letter_total(client), "refused_by_writer": refused_counts(client),
                         "recent": [letter.__dict__ for letter in recent_dead_letters(client, dead_letters)]},
        "periodic_errors": {text(k): int(v) for k, v in client.hgetall(PERIODIC_ERRORS).items()},
        "generated_at": time.time(),
    }


def _last_failure(sid: StreamId) -> str:
    raw = sync_redis().get(last_failure_key(sid))
    return text(raw, errors="replace") if raw else ""


def health_problems() -> list[str]:
    """Why the service is unhealthy; empty when Redis and the database answer and the beat runs.

    Open to anyone (load balancers): it says what is down, never hosts, ports, users or the errors'
    text, which go to the log."""
    problems = []
    beat_seen: bytes | str | None = None
    now = 0.0
    try:
        client = sync_redis()
        beat_seen = client.get(BEAT_SEEN)
        now = server_time(client)  # the beat's mark is on the Redis server's clock too
    except (redis.RedisError, OSError) as exc:
        logger.warning("healthz: redis: %s: %s", type(exc).__name__, exc)
        problems.append("redis: down")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        logger.warning("healthz: database: %s: %s", type(exc).__name__, exc)
        problems.append("database: down")
    if not problems:
        limit = max(3 * settings.COLLECTOR_SUPERVISE_INTERVAL, 30.0)
        if beat_seen is None:
            problems.append("beat: no periodic task has run yet")
        elif now - float(beat_seen) > limit:
            problems.append(f"beat: last periodic task ran {now - float(beat_seen):.0f} s ago")
    return problems
