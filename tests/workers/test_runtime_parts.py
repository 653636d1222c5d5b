"""The runtime's parts on their own, each with its collaborators passed in: the batch leases, the buffer sink,
the fence and the error recorder (the runtime's tests run them together against the fake exchange)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from streams.binance.protocol import TRADE, Trade
from streams.binance.streamid import stream_id
from workers.buffer import BUFFER_TRADES
from workers.fence import Fence
from workers.handoff import BufferSink, last_ids
from workers.keys import last_id_key, lease_key
from workers.leases import Lease, release_leases, renew_leases
from workers.process_errors import ErrorRecorder
from workers.redis import async_redis

BTC, ETH = stream_id("BTCUSDT", TRADE), stream_id("ETHUSDT", TRADE)


def make(symbol: str, trade_id: int) -> Trade:
    return Trade(symbol, TRADE, trade_id, "1.00000000", "1.00000000", trade_id, trade_id, False)


async def test_leases_are_renewed_and_released_in_one_step_and_only_by_their_owners(clean_redis: None) -> None:
    client = async_redis()
    try:
        ours = [Lease(client, stream_id(f"S{i:03d}USDT", TRADE), f"w:{i}", ttl=0.5) for i in range(50)]
        assert all([await lease.acquire() for lease in ours])
        await client.set(ours[7].key, "someone else")  # taken over (the lease expired meanwhile)
        await client.delete(ours[9].key)                # gone
        assert await renew_leases(client, ours) == [i not in (7, 9) for i in range(50)]
        assert 400 < await client.pttl(ours[0].key) <= 500  # renewed for their TTL
        await release_leases(client, ours)
        assert await client.keys("collector:lease:*") == [ours[7].key.encode()]  # only ours were released
        assert await renew_leases(client, []) == []
    finally:
        await client.aclose()


async def test_the_buffer_sink_hands_batches_on_and_moves_each_streams_resume_point_with_them(
        clean_redis: None) -> None:
    handed: list[list[Trade]] = []
    client = async_redis()
    try:
        sink = BufferSink(client, on_handed=handed.append, errors=ErrorRecorder())
        batch = [make("BTCUSDT", 1), make("ETHUSDT", 7), make("BTCUSDT", 2)]
        await sink.write(batch)
        assert handed == [batch] and not sink.full
        assert await client.get(last_id_key(BTC)) == b"2" and await client.get(last_id_key(ETH)) == b"7"
        assert last_ids(batch) == {last_id_key(BTC): 2, last_id_key(ETH): 7}
        sink.keep([make("BTCUSDT", 3), make("ETHUSDT", 8)])
        assert sink.pending_for(BTC) and sink.drop(BTC) == 1 and not sink.pending_for(BTC)
        assert await sink.close(1.0) == 0 and await client.get(last_id_key(ETH)) == b"8"
    finally:
        await client.aclose()


async def test_a_full_buffer_holds_the_sink_says_so_and_lets_go_when_there_is_room(
        clean_redis: None, settings: Any) -> None:
    settings.COLLECTOR_BUFFER_MAX_TRADES = 1
    handed: list[list[Trade]] = []
    client = async_redis()
    try:
        sink = BufferSink(client, on_handed=handed.append, errors=ErrorRecorder())
        await sink.write([make("BTCUSDT", 1)])
        second = asyncio.create_task(sink.write([make("BTCUSDT", 2)]))
        while not sink.full:
            await asyncio.sleep(0.01)
        assert len(handed) == 1 and not second.done()
        await client.set(BUFFER_TRADES, 0)  # what a flush does
        await asyncio.wait_for(second, 5)
        assert len(handed) == 2 and not sink.full
    finally:
        await client.aclose()


async def test_the_fence_fires_unless_each_renewal_is_confirmed_within_three_quarters_of_the_ttl() -> None:
    fired = asyncio.Event()
    fence = Fence(1.0, fired.set)
    assert fence.limit == pytest.approx(0.75)
    fence.arm(asyncio.get_running_loop())
    try:
        for _ in range(20):  # a second of renewals, each confirmed in time: no fence
            await asyncio.sleep(0.05)
            fence.confirmed(time.monotonic())
        assert not fired.is_set()
        last = time.monotonic()
        await asyncio.wait_for(fired.wait(), 5)  # none confirmed any more
        assert time.monotonic() - last >= 0.75 - 0.05
    finally:
        fence.disarm()


def test_a_run_of_errors_is_counted_whole_and_logged_when_it_starts_and_when_it_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    errors = ErrorRecorder()
    with caplog.at_level(logging.INFO, logger="workers.process_errors"):
        for _ in range(3):
            errors.note("heartbeat", ConnectionError("Redis is away"))
        errors.recovered()
        errors.recovered()
    assert errors.count == 3 and errors.last == "heartbeat: ConnectionError: Redis is away"
    assert [r.getMessage() for r in caplog.records] == [
        "heartbeat failed (ConnectionError: Redis is away); retrying",
        "recovered after 3 failed attempts (heartbeat: ConnectionError: Redis is away)"]


def test_lease_keys_keep_their_format() -> None:
    assert lease_key(BTC) == "collector:lease:btcusdt@trade" and last_id_key(ETH) == "collector:last-id:ethusdt@trade"
