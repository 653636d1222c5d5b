"""The streams' state as a live page may see it, read once per web process for all its pages.

Pages used to poll `/api/streams/` every 3 s each (about 400 tabs saturated the web process); now the
process's hub reads the statuses once per heartbeat and pushes them over the pages' sockets. Only what the
page showed before crosses: per stream its state, trades/s and lag (the status page and the API are
staff-only; their dead letters, errors and workers stay there).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from django.db import close_old_connections

from workers.keys import PREFIX

LIVE_STATS_TTL = 30  # s: the stats of a web process that stopped writing them disappear


def streams_state() -> list[dict[str, Any]]:
    """Every enabled or running stream: `stream`, `symbol`, `state`, `trades_per_s`, `lag_ms`, and for the
    hub alone (never sent to pages) `last_trade_age`, seconds since the stream task last got a trade.

    The state is `workers.status.shown_state`'s, as everywhere: "not running" when enabled without a task,
    "stalled" when its heartbeat, data or progress is stale."""
    from workers.registry import enabled_streams
    from workers.status import all_statuses, shown_state

    close_old_connections()  # long-lived thread: a connection past its age is replaced
    try:
        enabled = set(enabled_streams())
    finally:
        close_old_connections()
    statuses = all_statuses()
    streams = []
    for sid in sorted(enabled | set(statuses)):
        status = statuses.get(sid)
        state = shown_state(status)
        streams.append({"stream": str(sid), "symbol": sid.symbol, "state": state,
                        "trades_per_s": round(status.trades_per_s, 1) if status else 0.0,
                        "lag_ms": status.lag_ms if status else None,
                        "last_trade_age": status.last_trade_age if status else None})
    return streams


def release_connections() -> None:
    """Close this thread's database connections (the hub's thread, when the hub stops)."""
    from django.db import connections

    connections.close_all()


def live_stats_key(process: str | None = None) -> str:
    """Hash of one web process's live-feed counters (`collector:live:<host>:<pid>`)."""
    return f"{PREFIX}:live:{process or process_name()}"


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def write_live_stats(stats: dict[str, int]) -> None:
    """Publish this process's counters (pages, refused, dropped as too slow, ...) for tools and tests."""
    from workers.redis import sync_redis

    key = live_stats_key()
    with sync_redis().pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping={name: str(value) for name, value in stats.items()})
        pipe.expire(key, LIVE_STATS_TTL)
        pipe.execute()


def read_live_stats() -> dict[str, dict[str, int]]:
    """Every web process's live-feed counters, by process."""
    from workers.redis import sync_redis, text

    client = sync_redis()
    out = {}
    for key in client.scan_iter(match=f"{PREFIX}:live:*", count=500):
        raw = client.hgetall(key)
        out[text(key).split(":", 2)[2]] = {text(k): int(v) for k, v in raw.items()}
    return out
