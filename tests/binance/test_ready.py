"""The stream client's ready queue: streams taken in the order they had trades, and backpressure at its limit."""

from __future__ import annotations

import asyncio

from streams.binance.protocol import TRADE, Trade
from streams.binance.ready import ReadyQueue
from streams.binance.sequencer import Sequencer


def trade(symbol: str, trade_id: int) -> Trade:
    return Trade(symbol, TRADE, trade_id, "1.00000000", "1.00000000", trade_id, trade_id, False)


async def test_streams_are_taken_in_the_order_they_had_trades_and_producers_wait_at_the_limit() -> None:
    queue = ReadyQueue(limit=5)
    quiet, busy = Sequencer(), Sequencer()
    queue.added(quiet, quiet.live(trade("QUIETUSDT", 1)).ready)
    for i in range(1, 5):
        queue.added(busy, busy.live(trade("BUSYUSDT", i)).ready)
    assert queue.count == 5 and queue.backlogged
    room = asyncio.create_task(queue.wait_for_room(asyncio.Event()))
    await asyncio.sleep(0.01)
    assert not room.done()  # the connections stop reading: TCP pushes back
    assert [(t.symbol, t.trade_id) for t in queue.take(2)] == [("QUIETUSDT", 1), ("BUSYUSDT", 1)]
    await asyncio.wait_for(room, 1)  # below the limit again
    assert [t.trade_id for t in queue.take_stream(busy)] == [2, 3, 4]
    assert queue.count == 0 and queue.take(10) == [] and queue.take_stream(quiet) == []


async def test_a_consumer_waiting_for_trades_wakes_when_one_is_added_or_the_client_stops() -> None:
    queue = ReadyQueue(limit=10)
    sequencer = Sequencer()
    waiting = asyncio.create_task(queue.wait_for_trades())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    queue.added(sequencer, sequencer.live(trade("BTCUSDT", 1)).ready)
    await asyncio.wait_for(waiting, 1)
    stopped = asyncio.create_task(queue.wait_for_trades())
    await asyncio.sleep(0.01)
    queue.wake()
    await asyncio.wait_for(stopped, 1)
