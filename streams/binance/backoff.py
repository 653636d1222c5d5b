"""The one retry schedule of the project: exponential backoff with full jitter, capped, reset after a
stable period, optionally giving up after a number of attempts.

Every retry loop uses it (reconnects, REST calls, backfill pages, database writes, Redis hand-offs,
lease renewals); what is retried at all is decided by `errors.retry_delay` (the exchange) and
`streams.failures.classify` (database, Redis). Waits the other side asks for (Retry-After, the
connection budget, the request-weight minute) are not retries and do not use it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """The delay before each reconnect attempt.

    Full jitter (a uniform draw from 0 to the exponential bound) spreads the reconnects of many
    streams after a common failure, so they do not all hit the exchange's 300-connections-per-5-minutes
    limit together. The bound doubles per failed attempt up to `cap`; a connection that stayed up for
    `reset_after` seconds resets it.
    """

    base: float = 1.0
    cap: float = 60.0
    reset_after: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    attempts: int | None = None  # give up after this many retries (None: never)

    @property
    def exhausted(self) -> bool:
        return self.attempts is not None and self.attempt >= self.attempts

    def reset(self) -> None:
        self.attempt = 0

    def bound(self) -> float:
        """The largest delay the next attempt may draw."""
        return min(self.cap, self.base * 2.0 ** min(self.attempt, 62))

    def next_delay(self) -> float:
        """Draw the delay before the next attempt and count the attempt."""
        delay = self.rng.uniform(0.0, self.bound())
        self.attempt += 1
        return delay

    def connection_ended(self, uptime: float) -> None:
        """Record how long the last connection lived; a stable one resets the schedule."""
        if uptime >= self.reset_after:
            self.attempt = 0
