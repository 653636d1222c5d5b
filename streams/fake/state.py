"""What the fake exchange's servers share: its counters (Stats) and the view of it its REST side answers from."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from streams.binance.protocol import Trade
from streams.fake.archive import FakeArchive
from streams.fake.market import Market


@dataclass
class Stats:
    """Counters of what the exchange saw and did (read a snapshot from other threads)."""

    connection_attempts: int = 0
    connections_opened: Counter[str] = field(default_factory=Counter)  # per stream, at open or SUBSCRIBE
    connections_refused: Counter[str] = field(default_factory=Counter)  # per reason
    disconnects: Counter[str] = field(default_factory=Counter)  # server-side closes per reason
    messages_sent: int = 0
    messages_received: int = 0
    replayed: int = 0  # trade events sent again by the replay fault (also in messages_sent)
    rest_requests: Counter[str] = field(default_factory=Counter)  # per path
    rest_429: int = 0
    rest_418: int = 0
    rest_503: int = 0
    rest_garbage: int = 0  # answers replaced by a proxy's HTML page (the rest_garbage fault)
    faults: Counter[str] = field(default_factory=Counter)  # faults applied, per kind

    @property
    def refused_connections(self) -> int:
        return sum(self.connections_refused.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            f.name: (dict(v) if isinstance(v := getattr(self, f.name), Counter) else v) for f in fields(self)
        }


class Venue(Protocol):
    """What the REST server reads and drives of the exchange (the exchange passes itself in)."""

    @property
    def markets(self) -> Mapping[str, Market]: ...

    @property
    def statuses(self) -> Mapping[str, str]: ...

    @property
    def archive(self) -> FakeArchive: ...

    @property
    def stats(self) -> Stats: ...

    def is_down(self) -> bool: ...

    def inject(self, kind: str, symbol: str | None = None, **params: Any) -> int: ...

    def set_status(self, symbol: str, status: str) -> None: ...

    def record(self, symbol: str) -> list[Trade]: ...

    def agg_record(self, symbol: str) -> list[Trade]: ...
