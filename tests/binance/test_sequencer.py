"""The Sans-I/O sequencing core under random interleavings of live trades, gaps, rotations, replays and REST.

No sockets, no clock: a small model of the exchange (a record of consecutive ids, connections that
subscribe at some point and deliver in order, drops, make-before-break rotations, replays, a REST API that
may lag) drives the `Sequencer` through hypothesis's stateful testing. Whatever the interleaving, what is
handed on is every id once, in order, value for value; with a REST API that eventually answers and
windows wide enough, nothing is ever lost.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from streams.binance.protocol import TRADE, Trade
from streams.binance.sequence import Gap
from streams.binance.sequencer import NOTHING, ONE_READY, Change, Role, Sequencer

BASE = 1_000


def trade(trade_id: int) -> Trade:
    return Trade("BTCUSDT", TRADE, trade_id, f"{100 + trade_id % 7}.00000000", "0.10000000", trade_id,
                 trade_id + 1, trade_id % 2 == 0)


class Exchange(RuleBasedStateMachine):
    """One stream, its connections and REST, against one Sequencer."""

    @initialize(resume=st.one_of(st.none(), st.integers(0, 30)), made=st.integers(0, 40))
    def start(self, resume: int | None, made: int) -> None:
        self.made = made
        self.sequencer = Sequencer(last_id=None if resume is None else BASE + min(resume, made) - 1,
                                   hold_limit=10_000, backfill_max=10_000)
        self.primary = made      # index of the next trade the primary delivers (it subscribed now)
        self.primary_start = made
        self.successor: int | None = None
        self.retired: int | None = None
        self.replays = 0
        self.seen = -1  # the newest id a primary or successor delivered, or REST was asked to reach
        self.handed: list[Trade] = []

    # --- the exchange and its connections ---------------------------------------------------------

    @rule(n=st.integers(1, 25))
    def make_trades(self, n: int) -> None:
        self.made += n

    @rule(k=st.integers(1, 30))
    def deliver_primary(self, k: int) -> None:
        for _ in range(k):
            if self.primary >= self.made:
                return
            self.sequencer.live(trade(BASE + self.primary), Role.PRIMARY)
            self.seen = max(self.seen, BASE + self.primary)
            self.primary += 1

    @rule()
    def drop_and_reconnect(self) -> None:
        """The primary's connection drops: what was in flight is lost. A successor being opened takes over
        (the driver promotes it); otherwise a new connection gets only the trades made from now on."""
        if self.successor is not None:
            self.sequencer.promote()
            self.primary, self.primary_start, self.successor = self.successor, self.successor_start, None
        else:
            self.primary = self.primary_start = self.made
        self.retired = None

    @precondition(lambda self: self.successor is None)
    @rule()
    def start_rotation(self) -> None:
        self.successor = self.successor_start = self.made

    @precondition(lambda self: self.successor is not None)
    @rule(k=st.integers(1, 30))
    def deliver_successor(self, k: int) -> None:
        assert self.successor is not None
        for _ in range(k):
            if self.successor >= self.made:
                return
            self.sequencer.live(trade(BASE + self.successor), Role.SUCCESSOR)
            self.seen = max(self.seen, BASE + self.successor)
            self.successor += 1

    @precondition(lambda self: self.successor is not None)
    @rule()
    def switch(self) -> None:
        """Make before break: the successor becomes the primary (caught up, or the overlap timed out)."""
        assert self.successor is not None
        self.sequencer.promote()
        self.retired, self.primary, self.successor = self.primary, self.successor, None
        self.primary_start = self.successor_start

    @precondition(lambda self: self.retired is not None)
    @rule(k=st.integers(1, 10))
    def deliver_retired(self, k: int) -> None:
        assert self.retired is not None
        for _ in range(k):
            if self.retired >= self.made:
                return
            self.sequencer.live(trade(BASE + self.retired), Role.RETIRED)
            self.retired += 1

    @rule(k=st.integers(1, 8))
    def replay(self, k: int) -> None:
        """The primary sends its last k trades again (a replayed stream): ids going back."""
        start = max(self.primary_start, self.primary - k)
        for index in range(start, self.primary):
            self.sequencer.live(trade(BASE + index), Role.PRIMARY)
            self.replays += 1

    @rule(page=st.integers(1, 50), lag=st.integers(0, 5))
    def serve_rest(self, page: int, lag: int) -> None:
        """One REST page for what the sequencer wants; REST lags the stream by `lag` trades."""
        wanted = self.sequencer.wanted
        if wanted is None:
            return
        newest = BASE + self.made - 1 - lag
        ids = range(wanted.first, min(wanted.last, newest) + 1)
        self.sequencer.page([trade(i) for i in list(ids)[:page]])

    @rule()
    def catch_up(self) -> None:
        """The driver asks REST for the newest id (a resume): REST may then deliver trades the primary has
        not delivered yet, and the primary's copies are overlap, never ids going back."""
        if self.made and self.sequencer.last_id is not None:
            self.sequencer.catch_up(BASE + self.made - 1)
            self.seen = max(self.seen, BASE + self.made - 1)

    @rule(limit=st.one_of(st.none(), st.integers(1, 20)))
    def take(self, limit: int | None) -> None:
        self.handed += self.sequencer.take(limit)

    # --- what must always hold ------------------------------------------------------------------------

    @invariant()
    def every_id_once_in_order_value_for_value(self) -> None:
        ids = [t.trade_id for t in self.handed]
        assert ids == list(range(ids[0], ids[0] + len(ids))) if ids else True, ids
        assert all(t == trade(t.trade_id) for t in self.handed)
        assert self.sequencer.counters.missed == 0 and not self.sequencer.unhealed
        assert self.sequencer.counters.ids_back <= self.replays  # only a replay goes back, never an overlap

    @invariant()
    def it_only_asks_rest_for_ids_after_the_last_one_handed_on(self) -> None:
        wanted = self.sequencer.wanted
        if wanted is not None:
            assert self.sequencer.last_id is not None and wanted.first == self.sequencer.last_id + 1
            assert wanted.last >= wanted.first

    def teardown(self) -> None:
        """Everything delivered and REST answering fully: the handed run reaches the newest id seen."""
        if not hasattr(self, "sequencer"):
            return
        if self.successor is not None:
            self.switch()
        self.deliver_primary(10**6)
        for _ in range(10**4):
            if self.sequencer.wanted is None:
                break
            self.serve_rest(page=1000, lag=0)
        self.take(None)
        assert self.sequencer.wanted is None and self.sequencer.holding == 0
        self.every_id_once_in_order_value_for_value()
        if self.handed:
            assert self.handed[-1].trade_id == self.seen  # up to the newest id any connection delivered


TestInterleavings = Exchange.TestCase
TestInterleavings.settings = settings(max_examples=300, stateful_step_count=60, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


# --- examples of each rule ------------------------------------------------------------------------------

def test_a_gap_is_held_fetched_and_released_in_order() -> None:
    sequencer = Sequencer(last_id=BASE)
    sequencer.live(trade(BASE + 5))
    assert sequencer.take() == [] and sequencer.wanted == Gap(BASE + 1, BASE + 4)
    sequencer.page([trade(BASE + 3), trade(BASE + 1), trade(BASE + 2)])  # any order; partial
    assert sequencer.wanted == Gap(BASE + 4, BASE + 4)
    sequencer.page([trade(BASE + 4)])
    assert [t.trade_id for t in sequencer.take()] == [BASE + i for i in range(1, 6)]
    assert (sequencer.counters.gaps_found, sequencer.counters.gaps_healed, sequencer.counters.backfilled) == (1, 1, 4)


def test_a_gap_rest_cannot_fill_is_given_up_loudly_and_the_held_trades_go_on() -> None:
    sequencer = Sequencer(last_id=BASE)
    sequencer.live(trade(BASE + 5))
    sequencer.live(trade(BASE + 6))
    change = sequencer.give_up("REST answered 503 five times")
    assert [t.trade_id for t in sequencer.take()] == [BASE + 5, BASE + 6]
    assert sequencer.counters.missed == 4 and change == Change(
        ready=2, losses=((Gap(BASE + 1, BASE + 4), "REST answered 503 five times"),))


def test_the_backfill_window_keeps_the_newest_ids() -> None:
    sequencer = Sequencer(last_id=BASE, backfill_max=3)
    sequencer.live(trade(BASE + 10))
    assert sequencer.wanted == Gap(BASE + 7, BASE + 9) and sequencer.counters.missed == 6


def test_ids_going_back_on_the_primary_are_counted_and_kept_not_handed_on() -> None:
    sequencer = Sequencer()
    for i in range(10):
        sequencer.live(trade(BASE + i))
    for i in range(7, 10):
        sequencer.live(trade(BASE + i))
    assert len(sequencer.take()) == 10 and sequencer.counters.ids_back == 3
    assert [t.trade_id for t in sequencer.regressions] == [BASE + 7, BASE + 8, BASE + 9]


def test_a_rotation_overlap_is_not_a_regression_and_costs_no_trade() -> None:
    sequencer = Sequencer(last_id=BASE)
    for i in range(4, 8):  # the successor starts ahead: the primary has not delivered 1..3 yet
        sequencer.live(trade(BASE + i), Role.SUCCESSOR)
    assert sequencer.successor_caught_up() is False and sequencer.take() == []
    for i in range(1, 6):  # the primary catches up, and overlaps
        sequencer.live(trade(BASE + i), Role.PRIMARY)
    assert sequencer.successor_caught_up() is True
    sequencer.promote()
    sequencer.live(trade(BASE + 5), Role.RETIRED)
    sequencer.live(trade(BASE + 8), Role.PRIMARY)
    assert [t.trade_id for t in sequencer.take()] == [BASE + i for i in range(1, 9)]
    assert sequencer.counters.ids_back == 0 and sequencer.counters.gaps_found == 0


def test_a_quiet_stream_catches_up_without_a_live_trade() -> None:
    sequencer = Sequencer(last_id=BASE)
    sequencer.catch_up(BASE + 3)
    assert sequencer.wanted == Gap(BASE + 1, BASE + 3)
    sequencer.page([trade(BASE + i) for i in range(1, 4)])
    assert [t.trade_id for t in sequencer.take()] == [BASE + 1, BASE + 2, BASE + 3] and sequencer.wanted is None


def test_a_resumed_stream_counts_live_trades_at_or_below_its_resume_point_as_overlap_not_ids_back() -> None:
    # Seen as ids_back=135 on the status page after a clean restart: the new subscription's first trades
    # were at or below the resume point (what was stored before), which is overlap, not ids going back.
    sequencer = Sequencer(last_id=BASE + 10)
    for i in range(8, 13):
        sequencer.live(trade(BASE + i))
    assert [t.trade_id for t in sequencer.take()] == [BASE + 11, BASE + 12]
    assert sequencer.counters.ids_back == 0 and sequencer.counters.duplicates == 3
    sequencer.live(trade(BASE + 9))  # below what this subscription handed on itself: a real regression
    assert sequencer.counters.ids_back == 1 and [t.trade_id for t in sequencer.regressions] == [BASE + 9]


def test_live_trades_that_rest_fetched_first_are_overlap_not_ids_back() -> None:
    sequencer = Sequencer(last_id=BASE)
    sequencer.catch_up(BASE + 5)  # a resume: REST fetches up to the exchange's newest trade
    sequencer.page([trade(BASE + i) for i in range(1, 6)])
    for i in range(3, 8):  # the subscription's first trades were made before REST was asked
        sequencer.live(trade(BASE + i))
    assert [t.trade_id for t in sequencer.take()] == [BASE + i for i in range(1, 8)]
    assert sequencer.counters.ids_back == 0 and sequencer.counters.duplicates == 3


def test_each_input_says_what_it_changed_for_the_driver_to_act_on() -> None:
    sequencer = Sequencer(last_id=BASE)
    assert sequencer.live(trade(BASE)) is NOTHING        # overlap with the resume point: nothing to do
    assert sequencer.live(trade(BASE + 1)) is ONE_READY  # the common case costs no allocation
    assert sequencer.live(trade(BASE + 5)) == Change(holding=True, wanted=Gap(BASE + 2, BASE + 4))
    assert sequencer.live(trade(BASE + 6)) == Change(holding=True, wanted=Gap(BASE + 2, BASE + 4))
    assert sequencer.page([trade(BASE + 2), trade(BASE + 3)]) == Change(ready=2, holding=True,
                                                                         wanted=Gap(BASE + 4, BASE + 4))
    assert sequencer.page([trade(BASE + 4)]) == Change(ready=3)  # the gap healed: the held trades go on
    assert sequencer.live(trade(BASE + 3)) == Change(went_back=((BASE + 3, BASE + 6),))  # logged once per run
    assert sequencer.live(trade(BASE + 4)) is NOTHING
    assert len(sequencer.take()) == 6 and sequencer.counters.ids_back == 2
