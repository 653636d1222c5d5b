"""The fence: a process that cannot confirm its leases stops streaming before any lease can expire.

A lease lives COLLECTOR_LEASE_TTL seconds unless renewed. If no renewal is confirmed within FENCE_AT of the
TTL after the last confirmed one was sent (Redis away, a stalled heartbeat), every exchange connection of
the process is dropped: by the time a lease expires and another task can take its stream, this one has
stopped, so an outage of Redis never makes two owners of one stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

FENCE_AT: Final = 0.75  # of the lease TTL after a renewal was sent: drop every connection if none confirmed since


class Fence:
    """Calls `on_fence` unless each lease renewal is confirmed within FENCE_AT of the TTL after the previous
    confirmed one was sent: a timer on the loop, independent of the heartbeat's own flow."""

    def __init__(self, ttl: float, on_fence: Callable[[], None]) -> None:
        self._ttl = ttl
        self._on_fence = on_fence
        self._valid_from = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def limit(self) -> float:
        """Seconds after a renewal was sent within which it must be confirmed."""
        return self._ttl * FENCE_AT

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._schedule()

    def confirmed(self, sent_at: float) -> None:
        """A renewal sent at `sent_at` (monotonic) was confirmed."""
        self._valid_from = max(self._valid_from, sent_at)
        self._schedule()

    def remaining(self) -> float:
        return self._valid_from + self.limit - time.monotonic()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    def _schedule(self) -> None:
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(max(0.0, self.remaining()), self._on_fence)
