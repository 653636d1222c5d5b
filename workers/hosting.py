"""A stream task hosted by the process's runtime: its handle while it runs, and its outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio
from asgiref.sync import sync_to_async
from django.db import connection

from streams.failures import describe, is_transient
from streams.storage import last_stored_ids
from workers.keys import StreamId, last_id_key
from workers.leases import Lease
from workers.status import StreamStatus

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """Why a stream task ended, and what it handed on."""

    reason: str
    trades: int = 0
    status: StreamStatus | None = None
    failed: bool = False


@dataclass
class StreamHandle:
    """One stream task hosted by the runtime: its lease, what it handed on, how it ends."""

    sid: StreamId
    owner: str
    lease: Lease
    publish: Callable[[StreamStatus], None] | None  # a task event for Flower
    started: float = field(default_factory=time.monotonic)
    handed: int = 0
    handed_at: float = field(default_factory=time.monotonic)
    errors: int = 0
    last_error: str = ""
    reason: str = ""
    failure: BaseException | None = None
    stopping: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    counted: dict[str, int] = field(default_factory=dict)  # the counters as last added to the stream's totals
    published: tuple[str, float] = ("", 0.0)  # (state, monotonic) of the last task event


async def resume_point(client: redis.asyncio.Redis, sid: StreamId) -> int | None:
    """Where a stream resumes: the newer of the last stored id and the last id handed to the buffer (not
    flushed yet). With the database away, the buffer's id alone (a hole before it is found and filled by
    the audit)."""
    try:
        stored = await sync_to_async(_last_stored_then_close, thread_sensitive=False)(sid)
    except Exception as exc:
        if not is_transient(exc):
            raise
        logger.warning("database unavailable for the resume point (%s); resuming from the buffer's last id",
                       describe(exc))
        stored = {}
    handed = await client.get(last_id_key(sid))
    candidates = [value for value in (stored.get(sid), int(handed) if handed else None) if value]
    return max(candidates) if candidates else None


def _last_stored_then_close(sid: StreamId) -> dict[StreamId, int]:
    """The last stored id, on a short-lived executor thread whose connection must not linger."""
    try:
        return last_stored_ids([sid])
    finally:
        connection.close()
