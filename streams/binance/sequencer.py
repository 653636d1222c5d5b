"""One stream's id continuity, without I/O: what to hand on, what to fetch from REST, what was lost.

Binance trade ids (and aggregate ids) are consecutive per symbol and channel. A `Sequencer` is fed what
arrives — live trades from the connection in use (the primary), from its successor while a connection is
being replaced (make before break), from the one being retired, and REST pages — and says what to hand
on (`take`, every id once and in order), which ids to fetch (`wanted`), and what is lost (`missed`). Like
websockets' Sans-I/O protocol it never reads a socket, sleeps, or looks at a clock, and each input returns
what it changed (a `Change`: trades now ready, whether live trades are held, the ids to fetch, ids that
went back, gaps given up), so that the asyncio driver (streams/binance/client.py) acts on that instead of
polling its state after every trade; property tests drive it through random interleavings of live trades,
gaps, rotations, replays and REST pages (tests/binance/test_sequencer.py).

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
from typing import Final

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


@dataclass(frozen=True, slots=True)
class Change:
    """What one input to a sequencer changed: what its driver acts on."""

    ready: int = 0                                  # trades that became ready to take (hand on)
    holding: bool = False                           # live trades are held back (behind a gap, or a successor)
    wanted: Gap | None = None                       # the ids to fetch from REST now
    went_back: tuple[tuple[int, int], ...] = ()     # (id, last id) of each run of ids that went back, to log
    losses: tuple[tuple[Gap, str], ...] = ()        # gaps given up since, and why, to log


NOTHING: Final = Change()
ONE_READY: Final = Change(ready=1)  # the common case, one live trade after another: shared, made once


@dataclass(eq=False)  # a state machine: one is itself only (hashed by identity, as the ready queue keys them)
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

    def live(self, trade: Trade, role: Role = Role.PRIMARY) -> Change:
        """A trade from a connection in the given role. On every trade: the common outcome is a shared
        constant (ONE_READY), found with a few attribute reads."""
        out = self._out
        before = len(out)
        if role is Role.PRIMARY:
            self._from_primary(trade)
        elif role is Role.SUCCESSOR:
            self._from_successor(trade)
        else:
            self._from_retired(trade)
        if self._gap is None and not (self._hold or self._successor or self._went_back or self._losses):
            ready = len(out) - before
            return ONE_READY if ready == 1 else NOTHING if ready == 0 else Change(ready)
        return self._change(before)

    def promote(self) -> Change:
        """The successor became the primary: what it held back is taken as the primary's own. It is a new
        subscription: what it delivers at or below the last id is overlap (it may not have caught up when
        the switch came) until it goes back behind an id it delivered itself."""
        before = len(self._out)
        held, self._successor = self._successor, deque()
        self._live_high = None
        for trade in held:
            self._from_primary(trade)
        return self._change(before)

    def discard_successor(self) -> Change:
        """The successor is gone before the switch: what it held is fetched again if it is missed."""
        self._successor.clear()
        return self._change(len(self._out))

    def successor_caught_up(self) -> bool | None:
        """Whether the primary has reached the successor's first trade; None while the successor has
        delivered nothing for this stream (a quiet stream does not hold a rotation up)."""
        if not self._successor:
            return None
        return self.last_id is not None and self._successor[0].trade_id <= self.last_id + 1

    def catch_up(self, newest_id: int) -> Change:
        """The exchange's newest id (asked by the driver for a quiet stream): fetch up to it."""
        before = len(self._out)
        if self.last_id is not None and newest_id > self.last_id:
            self._catch_up_to = max(self._catch_up_to or newest_id, newest_id)
            if self._gap is None:
                self._open_gap(newest_id + 1)
        return self._change(before)

    def page(self, trades: Sequence[Trade]) -> Change:
        """A REST page for the gap being fetched (any order of pages; ids outside it are ignored)."""
        before = len(self._out)
        gap = self._gap
        if gap is None:
            return self._change(before)
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
        return self._change(before)

    def give_up(self, why: str) -> Change:
        """The gap being fetched cannot be fetched (REST failed, or does not have it): lose it, go on."""
        before = len(self._out)
        if self._gap is not None and (self.last_id is None or self.last_id < self._gap.last):
            self._lose(Gap(self._gap.first if self.last_id is None else self.last_id + 1, self._gap.last), why)
        self._gap = None
        self._release()
        return self._change(before)

    def reset(self, why: str) -> Change:
        """The resume point is not trusted (it lies ahead of the exchange): start from the live stream."""
        self.last_id, self._gap, self._catch_up_to = None, None, None
        self._hold.clear()
        del why  # the driver logs it
        return self._change(len(self._out))

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

    def _change(self, before: int) -> Change:
        """What changed since the input began (`before`: trades ready then); ids that went back and losses
        are handed over once."""
        went_back, losses = tuple(self._went_back), tuple(self._losses)
        self._went_back.clear()
        self._losses.clear()
        return Change(len(self._out) - before, bool(self._hold or self._successor), self.wanted, went_back, losses)


def _trade_id(trade: Trade) -> int:
    return trade.trade_id
