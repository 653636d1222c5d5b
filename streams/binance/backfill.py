"""The REST side of a stream's continuity: the backfill of what its sequencer wants, and the resume check.

One backfill task per stream with a gap (a dropped connection carrying 200 streams heals 200 gaps), each
fetching page by page until its sequencer wants nothing more, waiting for room in the ready queue between
pages, within the REST weight budget (streams.binance.rest). A gap the REST API does not show yet (it lags
the stream by a moment) is asked again on the backfill policy, then given up loudly; a REST failure gives
it up at once. The resume check asks the exchange for its newest trade when a stream resumes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from streams.binance.backoff import Policy
from streams.binance.errors import StreamError
from streams.binance.rest import BinanceRest
from streams.binance.sequencer import Change
from streams.binance.stream import StreamState

logger = logging.getLogger(__name__)

Apply = Callable[[StreamState, Change], None]


class Backfill:
    """Fills the gaps of the client's streams from `rest`; `apply` hands each change to the client."""

    def __init__(self, rest: BinanceRest, *, policy: Policy, rng: random.Random, apply: Apply,
                 wait_for_room: Callable[[], Awaitable[None]], stopping: asyncio.Event,
                 sleep: Callable[[float], Awaitable[None]]) -> None:
        self._rest = rest
        self._policy = policy
        self._rng = rng
        self._apply = apply
        self._wait_for_room = wait_for_room
        self._stopping = stopping
        self._sleep = sleep

    async def run(self, stream: StreamState) -> None:
        """Fetch what the stream's sequencer wants, page by page, until it wants nothing more."""
        key, sequencer = stream.key, stream.sequencer
        retries = self._policy.backoff(self._rng)
        try:
            while (gap := sequencer.wanted) is not None and not self._stopping.is_set():
                logger.info("%s: gap of %d trades (%d..%d); backfilling from REST", key, gap.size, gap.first,
                            gap.last)
                before = sequencer.last_id
                try:
                    async for page in self._rest.pages(key.symbol, key.channel, gap):
                        self._apply(stream, sequencer.page(page))
                        await self._wait_for_room()
                except StreamError as exc:
                    logger.error("%s: backfill failed: %s", key, exc)
                    self._apply(stream, sequencer.give_up(f"the REST API failed: {exc}"))
                    continue
                if sequencer.last_id != before:
                    retries.reset()
                    continue
                if retries.exhausted:
                    self._apply(stream, sequencer.give_up("not on the REST API"))
                    retries.reset()
                    continue
                await self._sleep(retries.next_delay())  # the REST API lags the stream by a moment
        finally:
            stream.backfill = None

    async def check_resume(self, stream: StreamState, current: Callable[[], bool]) -> None:
        """A resumed stream: refuse a resume point ahead of the exchange (stored data from another exchange),
        and catch a quiet stream up to the newest trade without waiting for a live one. `current` says
        whether the stream is still collected once the exchange has answered."""
        key, sequencer = stream.key, stream.sequencer
        try:
            latest = await self._rest.latest_trade_id(key.symbol, key.channel)
        except StreamError as exc:
            logger.warning("%s: cannot ask the exchange for its newest trade (%s); the next live trade shows "
                           "what is missing", key, exc)
            return
        resumed = sequencer.last_id
        if latest is None or resumed is None or not current():
            return
        if latest < resumed and stream.trades == 0:
            # Ids never go back on one exchange: the stored data came from another one (testnet against
            # mainnet, a fake exchange). Every live trade would look like one going back; start from the
            # live stream instead, and say so loudly.
            logger.error("%s: resume point %d is ahead of the exchange's newest trade %d; the stored trades "
                         "come from another exchange. Starting from the live stream.", key, resumed, latest)
            stream.resume_rejected = True
            self._apply(stream, sequencer.reset("resume point ahead of the exchange"))
        else:
            self._apply(stream, sequencer.catch_up(latest))
