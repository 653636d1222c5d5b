"""The one retry schedule of the project: exponential backoff with full jitter, capped, reset after a
stable period, optionally giving up after a number of attempts; and the one table of its policies.

Every retry loop uses it (reconnects, REST calls, backfill pages, database writes, Redis hand-offs,
lease renewals, the live hub, archive downloads, the launcher's restarts), each with its entry of `RETRY`;
what is retried at all is decided by `errors.retry_delay` (the exchange) and `streams.failures.classify`
(database, Redis). Waits the other side asks for (Retry-After, the connection budget, the request-weight
minute) are not retries and do not use it.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final


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


@dataclass(frozen=True)
class Policy:
    """A retry schedule: the first bound `base` s, doubled per failed attempt up to `cap` s, giving up after
    `attempts` retries (None: never), started afresh by `reset_after` s of a stable connection."""

    base: float
    cap: float
    attempts: int | None = None
    reset_after: float = 60.0

    def backoff(self, rng: random.Random | None = None) -> Backoff:
        """A fresh schedule of this policy (one per retry loop: it counts that loop's attempts)."""
        return Backoff(self.base, self.cap, self.reset_after, rng or random.Random(), attempts=self.attempts)

    def within(self, cap: float) -> Policy:
        """This policy with its cap at `cap` s, and its base no higher (a loop that must retry at least as
        often as something else happens, e.g. a heartbeat)."""
        return dataclasses.replace(self, base=min(self.base, cap), cap=cap)


# Every retry loop's policy. The settings override some (where noted) in one place each; the rest are the
# project's own choices, sized by what waits behind each loop.
RETRY: Final[Mapping[str, Policy]] = MappingProxyType({
    # The exchange's connections: spread many streams' reconnects out (300 attempts per 5 minutes per IP);
    # BINANCE_BACKOFF_BASE, _CAP and _RESET_AFTER override it (streams.config).
    "reconnect": Policy(1.0, 60.0, reset_after=60.0),
    # One REST request (a network error, a 5xx); 429 and 418 wait what the exchange asks instead.
    "rest request": Policy(0.5, 8.0, attempts=5),
    # A symbol checked before a stream is enabled or a one-off collection starts (someone waits for the
    # answer), and the periodic listing check (its next run is the retry).
    "symbol check": Policy(0.5, 8.0, attempts=1),
    # Waiting for the exchange to answer at all (a starting demo), within the caller's deadline.
    "exchange reachable": Policy(0.5, 8.0),
    # A gap the REST API does not show yet (it lags the stream by a moment): then the gap is given up.
    "backfill": Policy(0.2, 5.0, attempts=5),
    # One archive file's download (a network error, a 5xx).
    "archive download": Policy(0.5, 8.0, attempts=5),
    # The Redis hand-off buffer full or away: every stream of the process waits, so retry soon.
    "hand-off": Policy(0.05, 2.0),
    # Lease renewals that failed: sooner than the next beat, as the fence is running; the heartbeat caps
    # it at COLLECTOR_HEARTBEAT_INTERVAL (5 s by default) with `within`.
    "lease renewal": Policy(0.25, 5.0),
    # The database away under the one-off collector's writer: the batch is kept and retried until stored.
    "database write": Policy(0.2, 10.0),
    # The live page hub's channel-layer membership and feed (Redis away).
    "live hub": Policy(0.5, 10.0),
    # The launcher's processes (make run): a process that ran `reset_after` s starts its schedule afresh.
    "process restart": Policy(1.0, 30.0, reset_after=30.0),
})
