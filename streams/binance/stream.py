"""One stream of the stream client: its sequencer, the connection that carries it, and what was seen of it."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from streams.binance.protocol import Trade
from streams.binance.sequence import Gap
from streams.binance.sequencer import Sequencer
from streams.binance.slot import ConnectionSlot
from streams.binance.streamid import StreamId

_MICROSECONDS = 10**14  # exchange timestamps at or above this are microseconds


@dataclass
class StreamState:
    """A stream's continuity (`sequencer`), its connection (`slot`) and its clocks (monotonic seconds)."""

    key: StreamId
    sequencer: Sequencer
    slot: ConnectionSlot | None = None
    last_event_ts: int = 0
    last_received_us: int | None = None  # local receive time of the last live trade (µs since the epoch)
    last_trade_at: float | None = None   # monotonic: the last live trade arrived
    held_since: float | None = None      # monotonic: trades have been held behind a gap since
    last_progress: float | None = None   # monotonic: a trade was handed on
    resume_rejected: bool = False
    backfill: asyncio.Task[None] | None = None

    @property
    def lag_ms(self) -> int | None:
        """Receive time minus exchange event time of the last live trade, never below 0.

        The two times come from two clocks (the exchange's and this host's) that NTP keeps within a few
        milliseconds of each other at best, so a difference of a millisecond or two either way is clock
        skew, not lag: a trade cannot arrive before it happened. A negative difference is shown as 0."""
        if self.last_received_us is None or not self.last_event_ts:
            return None
        event_us = self.last_event_ts if self.last_event_ts >= _MICROSECONDS else self.last_event_ts * 1000
        return max(0, (self.last_received_us - event_us) // 1000)

    def stuck_for(self, now: float) -> float:
        """Seconds that live trades have been held without any trade being handed on since (0 when nothing
        is held): a backfill that makes no progress must not look healthy."""
        if not self.sequencer.holding or self.held_since is None:
            return 0.0
        return max(0.0, now - max(self.held_since, self.last_progress or self.held_since))

    # The continuity counters, as the status reads them.
    @property
    def last_id(self) -> int | None:
        return self.sequencer.last_id

    @property
    def trades(self) -> int:
        return self.sequencer.counters.trades

    @property
    def backfilled(self) -> int:
        return self.sequencer.counters.backfilled

    @property
    def duplicates(self) -> int:
        return self.sequencer.counters.duplicates

    @property
    def ids_back(self) -> int:
        return self.sequencer.counters.ids_back

    @property
    def gaps_found(self) -> int:
        return self.sequencer.counters.gaps_found

    @property
    def gaps_healed(self) -> int:
        return self.sequencer.counters.gaps_healed

    @property
    def missed(self) -> int:
        return self.sequencer.counters.missed

    @property
    def unhealed(self) -> deque[Gap]:
        return self.sequencer.unhealed

    @property
    def regressions(self) -> deque[Trade]:
        return self.sequencer.regressions

    @property
    def backfilling(self) -> bool:
        return self.sequencer.wanted is not None
