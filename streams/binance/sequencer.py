"""One stream's id continuity, without I/O: what to hand on, what to fetch from REST, what was lost.

Binance trade ids (and aggregate ids) are consecutive per symbol and channel. A `Sequencer` is fed what
arrives — live trades from the connection in use (the primary), from its successor while a connection is
being replaced (make before break), from the one being retired, and REST pages — and says what to hand
on (`take`, every id once and in order), which ids to fetch (`wanted`), and what is lost (`missed`). Like
websockets' Sans-I/O protocol it never reads a socket, sleeps, or looks at a clock: the asyncio driver
(streams/binance/hub.py) moves the data and decides when; property tests drive it through random
interleavings of live trades, gaps, rotations, replays and REST pages (tests/binance/test_sequencer.py).

Ids that go back. A live id at or below the last one handed on is one of two things:
- overlap: the subscription has not yet delivered that far itself, and the id was handed on from elsewhere
  first (stored before a resume, fetched from REST ahead of the live stream, delivered by the connection a
  rotation replaced). The exchange's stream simply overlaps what is already had: counted as a duplicate.
- a regression (`ids_back`): the id is at or below one that the same subscription (the primary connection,
  since it last became the primary) delivered itself already: a replayed stream or an exchange reset.
  Counted, and the trade is kept (`regressions`) for the audit to compare with what was stored.
So a new subscription (the start, a resume, a promoted successor) overlaps freely until it passes what it
delivered itself; only going back behind its own ids is a regression.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from streams.binance.protocol import Trade
from streams.binance.sequence import Gap, bounded_gap

_KEPT = 100  # unhealed gaps and regressed trades kept for the status and the audit


class Role(enum.Enum):
    PRIMARY = "primary"      # the connection in use
    SUCCESSOR = "successor"  # the next one, opened before the primary is closed (rotation)
    RETIRED = "retired"      # a replaced connection still delivering what was in flight


@dataclass
class Counters:
    trades: int = 0          # handed on
    backfilled: int = 0      # of which from REST
    duplicates: int = 0      # ids seen twice in an overlap the client made (rotation, REST and live)
    ids_back: int = 0        # live ids at or below one the primary delivered itself: a replay, an exchange reset
    gaps_found: int = 0
    gaps_healed: int = 0
    missed: int = 0          # ids given up (beyond the backfill window, or REST failed)


@dataclass
class Sequencer:
    """Continuity of one stream. `last_id`: the last id handed on (or to resume after), None for none."""

    last_id: int | None = None
    hold_limit: int = 10_000        # live trades held while a gap is fetched; beyond, REST fetches them too
    backfill_max: int = 100_000     # most ids fetched for one gap; older ones are given up (newest win)
    counters: Counters = field(default_factory=Counters)
    unhealed: deque[Gap] = field(default_factory=lambda: deque(maxlen=_KEPT))
    regressions: deque[Trade] = field(default_factory=lambda: deque(maxlen=_KEPT))
    _out: list[Trade] = field(default_factory=list)
    _hold: deque[Trade] = field(default_factory=deque)          # primary trades after a gap, in id order
    _successor: deque[Trade] = field(default_factory=deque)     # successor trades ahead of the primary
    _gap: Gap | None = None       # being fetched (or to be fetched): last_id+1 .. its last
    _catch_up_to: int | None = None  # a known newest id to reach without a live trade (a quiet resume)
    _losses: list[tuple[Gap, str]] = field(default_factory=list)
    _went_back: list[tuple[int, int]] = field(default_factory=list)
    _live_high: int | None = None  # the newest id the primary delivered since it became the primary

    # --- what comes in ---------------------------------------------------------------------------

    def live(self, trade: Trade, role: Role = Role.PRIMARY) -> None:
        """A trade from a connection in the given role."""
        if role is Role.RETIRED:
            self._from_retired(trade)
        elif role is Role.SUCCESSOR:
            self._from_successor(trade)
        else:
            self._from_primary(trade)

    def promote(self) -> None:
        """The successor became the primary: what it held back is taken as the primary's own. It is a new
        subscription: what it delivers at or below the last id is overlap (it may not have caught up when
        the switch came) until it goes back behind an id it delivered itself."""
        held, self._successor = self._successor, deque()
        self._live_high = None
        for trade in held:
            self._from_primary(trade)

    def discard_successor(self) -> None:
        """The successor is gone before the switch: what it held is fetched again if it is missed."""
        self._successor.clear()

    def successor_caught_up(self) -> bool | None:
        """Whether the primary has reached the successor's first trade; None while the successor has
        delivered nothing for this stream (a quiet stream does not hold a rotation up)."""
        if not self._successor:
            return None
        return self.last_id is not None and self._successor[0].trade_id <= self.last_id + 1

    def catch_up(self, newest_id: int) -> None:
        """The exchange's newest id (asked by the driver for a quiet stream): fetch up to it."""
        if self.last_id is None or newest_id <= self.last_id:
            return
        self._catch_up_to = max(self._catch_up_to or newest_id, newest_id)
        if self._gap is None:
            self._open_gap(newest_id + 1)

    def page(self, trades: Sequence[Trade]) -> None:
        """A REST page for the gap being fetched (any order of pages; ids outside it are ignored)."""
        gap = self._gap
        if gap is None:
            return
        for trade in sorted(trades, key=_trade_id):
            if self.last_id is not None and trade.trade_id <= self.last_id:
                continue
            if trade.trade_id > gap.last:
                break
            if self.last_id is not None and trade.trade_id > self.last_id + 1:
                self._lose(Gap(self.last_id + 1, trade.trade_id - 1), "absent from the REST API")
            self.counters.backfilled += 1
            self._emit(trade)
        if self.last_id is not None and self.last_id >= gap.last:
            self.counters.gaps_healed += 1
            self._gap = None
            self._release()

    def give_up(self, why: str) -> None:
        """The gap being fetched cannot be fetched (REST failed, or does not have it): lose it, go on."""
        if self._gap is not None and (self.last_id is None or self.last_id < self._gap.last):
            self._lose(Gap(self._gap.first if self.last_id is None else self.last_id + 1, self._gap.last), why)
        self._gap = None
        self._release()

    def reset(self, why: str) -> None:
        """The resume point is not trusted (it lies ahead of the exchange): start from the live stream."""
        self.last_id, self._gap, self._catch_up_to = None, None, None
        self._hold.clear()
        del why  # the driver logs it

    # --- what goes out ---------------------------------------------------------------------------

    def take(self, limit: int | None = None) -> list[Trade]:
        """Trades ready to hand on, in id order, each once."""
        if limit is None or limit >= len(self._out):
            out, self._out = self._out, []
            return out
        out, self._out = self._out[:limit], self._out[limit:]
        return out

    @property
    def ready(self) -> int:
        return len(self._out)

    @property
    def wanted(self) -> Gap | None:
        """The ids to fetch from REST now (first..last), or None."""
        if self._gap is None or self.last_id is None:
            return self._gap
        return Gap(self.last_id + 1, self._gap.last) if self.last_id < self._gap.last else None

    @property
    def holding(self) -> int:
        """Live trades held back (behind a gap being fetched, or a successor ahead of the primary)."""
        return len(self._hold) + len(self._successor)

    # --- the rules -------------------------------------------------------------------------------

    def _from_primary(self, trade: Trade) -> None:
        trade_id, last, high = trade.trade_id, self.last_id, self._live_high
        back = high is not None and trade_id <= high  # behind what this subscription delivered itself
        if not back:
            self._live_high = trade_id
        if self._gap is not None:
            self._hold_back(trade)
            return
        if last is None or trade_id == last + 1:
            self._emit(trade)
        elif trade_id <= last:
            if not back:
                self.counters.duplicates += 1  # overlap: handed on already from the store, REST or a rotation
            else:
                if not self.regressions or self.regressions[-1].trade_id + 1 != trade.trade_id:
                    self._went_back.append((trade.trade_id, last))
                self.counters.ids_back += 1
                self.regressions.append(trade)
        else:
            self._hold_back(trade)
            self._open_gap(trade.trade_id)

    def _from_successor(self, trade: Trade) -> None:
        """Held until the switch: only the primary hands on, so an id is never seen as going back when
        both connections deliver it."""
        if self.last_id is not None and trade.trade_id <= self.last_id:
            self.counters.duplicates += 1  # the primary delivered it already: the overlap
        elif self._successor and trade.trade_id <= self._successor[-1].trade_id:
            self.counters.duplicates += 1
        elif len(self._successor) < self.hold_limit:
            self._successor.append(trade)
        # else: dropped from memory; after the switch it shows up as a gap, and REST brings it back

    def _from_retired(self, trade: Trade) -> None:
        """What a replaced connection still delivers: the successor and REST cover it."""
        del trade
        self.counters.duplicates += 1

    def _emit(self, trade: Trade) -> None:
        self.last_id = trade.trade_id
        self.counters.trades += 1
        self._out.append(trade)
        if self._catch_up_to is not None and trade.trade_id >= self._catch_up_to:
            self._catch_up_to = None

    def _hold_back(self, trade: Trade) -> None:
        if self._hold and trade.trade_id <= self._hold[-1].trade_id:
            self.counters.duplicates += 1
        elif len(self._hold) < self.hold_limit:
            self._hold.append(trade)
        # else: dropped from memory; it shows up as a gap after the hold, and REST brings it back

    def _open_gap(self, before_id: int) -> None:
        """Ids from last_id+1 up to `before_id`-1 are missing: fetch them (the newest backfill_max)."""
        assert self.last_id is not None
        self.counters.gaps_found += 1
        beyond, wanted = bounded_gap(Gap(self.last_id + 1, before_id - 1), self.backfill_max)
        if beyond is not None:
            self._lose(beyond, "beyond the backfill window")
        self._gap = wanted
        if wanted is None:
            self._release()

    def _release(self) -> None:
        """Hand on held trades in order, up to the next gap (which is then fetched)."""
        while self._gap is None and self._hold:
            trade = self._hold[0]
            assert self.last_id is not None
            if trade.trade_id <= self.last_id:
                self._hold.popleft()
                self.counters.duplicates += 1  # REST brought it already
            elif trade.trade_id == self.last_id + 1:
                self._emit(self._hold.popleft())
            else:
                self._open_gap(trade.trade_id)
        if self._gap is None and self._catch_up_to is not None and self.last_id is not None:
            if self._catch_up_to > self.last_id:
                self._open_gap(self._catch_up_to + 1)
            else:
                self._catch_up_to = None

    def _lose(self, gap: Gap, why: str) -> None:
        self.counters.missed += gap.size
        self.unhealed.append(gap)
        self._losses.append((gap, why))
        self.last_id = gap.last

    @property
    def has_news(self) -> bool:
        """Ids that went back or gaps given up, not yet taken by the driver (for it to log)."""
        return bool(self._went_back or self._losses)

    def went_back(self) -> list[tuple[int, int]]:
        """(id, last id) of each run of ids that went back since the last call (for the driver to log)."""
        out, self._went_back = self._went_back, []
        return out

    def losses(self) -> list[tuple[Gap, str]]:
        """Gaps given up since the last call, and why (for the driver to log)."""
        out, self._losses = self._losses, []
        return out


def _trade_id(trade: Trade) -> int:
    return trade.trade_id
