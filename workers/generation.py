"""One generation of the runtime's shared parts: a stream client and everything that lives with it.

The runtime makes a generation for the first stream it hosts: the client whose streams share combined
connections, the runner pumping their trades into the buffer sink, the broadcaster, the fence and the
heartbeat (which stop with `stop`). A failure or a fence ends the generation and every stream it carried
(the supervisor starts them again); the next stream task starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import redis.asyncio
from django.conf import settings

from streams.binance.client import StreamClient
from streams.binance.protocol import Trade
from streams.binance.rest import BinanceRest
from streams.broadcast import ALL_TRADES_GROUP, Broadcaster
from streams.config import client_config
from streams.runner import Runner
from workers.budget import RedisWeightBudget
from workers.fence import Fence
from workers.handoff import FINAL_HANDOVER, BufferSink, hand_over_after_the_pump
from workers.process_errors import ErrorRecorder

logger = logging.getLogger(__name__)

STOP_GRACE: Final = 5.0  # s for a clean stop of the connections


@dataclass
class Generation:
    """The parts one stream client's life shares; `stop` is set when it ends."""

    client: StreamClient
    sink: BufferSink
    broadcaster: Broadcaster
    runner: Runner
    fence: Fence
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None
    connection_wait: float = 0.0  # s the last connection attempt waited for the shared connection budget

    async def wind_down(self) -> None:
        """Within a bound whatever the exchange and Redis do: the connections close (STOP_GRACE), what was
        read is handed on after the batch the pump holds (FINAL_HANDOVER), the REST pool closes."""
        await self.client.stop(timeout=STOP_GRACE)
        await hand_over_after_the_pump(self.client, self.sink, self.pump)
        with contextlib.suppress(Exception):  # closing an HTTP pool: nothing to save
            await self.client.rest.aclose()
        unwritten = await self.sink.close(FINAL_HANDOVER)
        if unwritten:
            logger.error("%d trades read could not be handed to the buffer within %.0f s; the next tasks "
                         "fetch them again from the exchange", unwritten, FINAL_HANDOVER)


def new_generation(client: redis.asyncio.Redis, errors: ErrorRecorder, *, linger: float,
                   on_handed: Callable[[list[Trade]], None], on_fence: Callable[[], None],
                   take_slot: Callable[[], Awaitable[None]]) -> Generation:
    """A started client (every connection attempt waits for `take_slot`: the shared connection budget), its
    REST on the shared weight budget, the sink into the buffer (`on_handed` told of each batch), a runner
    gathering a batch for `linger` s, a broadcaster, and an armed fence (`on_fence` when it fences). The
    caller starts the broadcaster, the pump and the heartbeat under its supervision."""
    config = client_config([])
    rest = BinanceRest(config.rest_url, micros=config.micros, budget=RedisWeightBudget(
        client, budget=settings.BINANCE_REST_WEIGHT_BUDGET, window=settings.BINANCE_REST_WEIGHT_WINDOW))
    stream_client = StreamClient(config, rest=rest, before_connect=take_slot)
    stream_client.start()
    sink = BufferSink(client, on_handed=on_handed, errors=errors)
    # One group: each web process joins it once and fans the trades out to its pages by symbol
    # (web.live.hub); a group per symbol cost one group_send per symbol and batch.
    broadcaster = Broadcaster([ALL_TRADES_GROUP], per_symbol=False)
    fence = Fence(settings.COLLECTOR_LEASE_TTL, on_fence)
    fence.arm(asyncio.get_running_loop())
    return Generation(stream_client, sink, broadcaster, Runner(stream_client, sink, linger=linger), fence)
