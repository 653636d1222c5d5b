"""The pure helpers: backoff schedule, trade-id continuity, the control-message token bucket."""

from __future__ import annotations

import ast
import dataclasses
import random
from pathlib import Path

import pytest

from streams.binance.backoff import RETRY, Backoff
from streams.binance.errors import (
    ConnectionLost,
    ExchangeUnavailable,
    InvalidStreamName,
    IpBanned,
    RateLimited,
    RestError,
    UnknownSymbol,
    retry_delay,
)
from streams.binance.protocol import Trade
from streams.binance.ratelimit import TokenBucket
from streams.binance.sequence import Gap, Verdict, bounded_gap, classify, missing_between
from streams.binance.streamid import StreamId, by_stream, stream_id


def test_backoff_grows_exponentially_is_capped_and_fully_jittered() -> None:
    backoff = Backoff(base=1.0, cap=8.0, reset_after=30.0, rng=random.Random(3))
    bounds, delays = [], []
    for _ in range(8):
        bounds.append(backoff.bound())
        delays.append(backoff.next_delay())
    assert bounds == [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(0 <= d <= b for d, b in zip(delays, bounds, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule


def test_backoff_resets_only_after_a_stable_connection() -> None:
    backoff = Backoff(base=1.0, cap=60.0, reset_after=30.0, rng=random.Random(1))
    for _ in range(4):
        backoff.next_delay()
    backoff.connection_ended(uptime=5.0)
    assert backoff.bound() == 16
    backoff.connection_ended(uptime=31.0)
    assert backoff.bound() == 1


def test_continuity_verdicts() -> None:
    assert classify(None, 7) is Verdict.FIRST
    assert classify(6, 7) is Verdict.NEXT
    assert classify(7, 7) is Verdict.DUPLICATE
    assert classify(9, 7) is Verdict.DUPLICATE
    assert classify(6, 10) is Verdict.GAP
    assert missing_between(6, 10) == Gap(7, 9)


def test_a_gap_beyond_the_backfill_window_keeps_the_newest_ids() -> None:
    assert bounded_gap(Gap(1, 10), 100) == (None, Gap(1, 10))
    assert bounded_gap(Gap(1, 10), 4) == (Gap(1, 6), Gap(7, 10))
    assert bounded_gap(Gap(1, 10), 0) == (Gap(1, 10), None)


def test_token_bucket_keeps_under_the_rate() -> None:
    # A window of one second sees at most burst + rate messages: 4, under the exchange's 5.
    bucket = TokenBucket(rate=3.0, burst=1.0)
    now, sent = 0.0, []
    while now < 10.0:
        wait = bucket.wait_time(now)
        if wait == 0:
            sent.append(now)
        now += max(wait, 0.01)
    for i in range(len(sent)):  # never more than the burst within any one second
        assert sum(1 for t in sent if sent[i] <= t < sent[i] + 1.0) <= 4
    assert 28 <= len(sent) <= 34


def test_the_one_retry_decision() -> None:
    def fresh(attempts: int | None = None) -> Backoff:
        return Backoff(base=2.0, cap=2.0, rng=random.Random(1), attempts=attempts)

    for transient in (ConnectionLost("x"), ExchangeUnavailable(503, "down")):
        delay = retry_delay(transient, fresh(), max_wait=60)
        assert delay is not None and 0 <= delay <= 2.0
    assert retry_delay(RateLimited(429, "slow down", retry_after=7), fresh(), max_wait=60) == 7
    assert retry_delay(IpBanned(418, "banned", retry_after=3600), fresh(), max_wait=60) is None
    assert retry_delay(RestError(400, "bad"), fresh(), max_wait=60) is None
    assert retry_delay(UnknownSymbol("XXX"), fresh(), max_wait=60) is None


def test_a_retry_schedule_with_attempts_gives_up_after_them() -> None:
    backoff = Backoff(base=1.0, cap=4.0, rng=random.Random(2), attempts=3)
    delays = [retry_delay(ConnectionLost("x"), backoff, max_wait=60) for _ in range(4)]
    assert all(d is not None and 0 <= d <= 4.0 for d in delays[:3]) and delays[3] is None
    backoff.reset()
    assert retry_delay(ConnectionLost("x"), backoff, max_wait=60) is not None


def test_every_retry_loop_takes_its_schedule_from_the_one_table() -> None:
    # Eight loops with seven policies was the smell: numbers at call sites. Only the table makes schedules
    # (and the launcher, whose CLI flags override the table's defaults for its restarts).
    root = Path(__file__).resolve().parents[2]
    makers = set()
    for package in ("streams", "workers", "web", "project", "benchmarks"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Backoff":
                    makers.add(str(path.relative_to(root)))
    assert makers == {"streams/binance/backoff.py", "project/launcher/procs.py"}


def test_a_policy_makes_fresh_schedules_and_can_be_capped_by_a_shorter_period() -> None:
    policy = RETRY["backfill"]
    first, second = policy.backoff(random.Random(1)), policy.backoff(random.Random(1))
    first.next_delay()
    assert (first.attempt, second.attempt) == (1, 0) and first.attempts == policy.attempts
    assert not second.exhausted and all(first.next_delay() <= policy.cap for _ in range(10)) and first.exhausted
    heartbeat = RETRY["lease renewal"].within(0.1)
    assert (heartbeat.base, heartbeat.cap) == (0.1, 0.1)


def test_a_stream_id_is_one_immutable_value_whatever_it_was_made_from() -> None:
    made = stream_id("btcusdt", "TRADE")
    assert made == StreamId.parse("btcusdt@trade") == StreamId.of(Trade("BTCUSDT", "trade", 1, "1", "1", 1, 1, False))
    assert str(made) == "btcusdt@trade" and (made.symbol, made.channel) == ("BTCUSDT", "trade")
    assert {made: 1}[StreamId(symbol="BTCUSDT", channel="trade")] == 1
    assert sorted([stream_id("ETHUSDT", "trade"), made, stream_id("BTCUSDT", "aggTrade")])[0].channel == "aggTrade"
    with pytest.raises(TypeError):
        StreamId("BTCUSDT", "trade")  # type: ignore[call-arg]  # by field name only: a field can join it later
    with pytest.raises(TypeError):
        _symbol, _channel = made  # type: ignore[misc]  # never unpacked as a tuple
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.symbol = "ETHUSDT"  # type: ignore[misc]
    for bad in ("BTCUSDT@trade", "btcusdt@kline", "btcusdt"):
        with pytest.raises(InvalidStreamName):
            StreamId.parse(bad)


def test_trades_are_grouped_by_stream_in_their_order() -> None:
    trades = [Trade(symbol, channel, i, "1", "1", i, i, False)
              for i, (symbol, channel) in enumerate([("BTCUSDT", "trade"), ("ETHUSDT", "trade"), ("BTCUSDT", "trade"),
                                                     ("BTCUSDT", "aggTrade")])]
    groups = by_stream(trades)
    assert list(groups) == [stream_id("BTCUSDT", "trade"), stream_id("ETHUSDT", "trade"),
                            stream_id("BTCUSDT", "aggTrade")]
    assert [t.trade_id for t in groups[stream_id("BTCUSDT", "trade")]] == [0, 2]
    assert all(sid.owns(t) for sid, group in groups.items() for t in group)
