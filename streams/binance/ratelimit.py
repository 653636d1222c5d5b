"""A token bucket for messages we send: the exchange disconnects above 5 incoming messages a second."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; times are monotonic seconds given by the caller."""

    rate: float
    burst: float
    tokens: float = -1.0
    updated: float = 0.0

    def wait_time(self, now: float) -> float:
        """Seconds until a token is available (0 if one is available now); takes it when available."""
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
