"""One live feed per web process: a single channel-layer member fans the trades out to the local pages.

Before the hub, with a group member per page, every batch was written into Redis once per page, each page
held a layer connection, and a page that left without `group_discard` stayed a member for 24 h (one
that stayed open longer than that silently stopped receiving). Here the process joins `binance_data`
once, renewing the membership every third of the layer's `group_expiry` (LIVE_GROUP_EXPIRY), so it
cannot go stale, and a process that died is forgotten within that expiry. What arrives (read in bulk,
web.live.inbox) is coalesced into one frame per subscription every LIVE_FLUSH_INTERVAL (the live
page's compact one, or the trade objects), and each page has a bounded queue: a page
LIVE_SEND_QUEUE frames behind is closed with a reason (counted) instead of holding the others up. The
hub also pushes the streams' state every LIVE_STATE_INTERVAL (the pages' heartbeat) and says when its
feed is interrupted, so a page never shows "live" over a dead feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import BaseChannelLayer, channel_layers
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from streams.binance.backoff import RETRY
from streams.broadcast import ALL_TRADES_GROUP, MESSAGE_TYPE
from streams.failures import describe, is_transient
from web.live.inbox import Inbox
from web.live.page import Backlog, Close, Direct, OutFrame, Page, Send
from web.live.state import release_connections, streams_state, write_live_stats
from web.live.wire import (
    CLOSE_FEED_FAILED,
    CLOSE_GOING_AWAY,
    CLOSE_TOO_SLOW,
    FEED_INTERRUPTED,
    FEED_LIVE,
    FEED_STARTING,
    by_symbol,
    clean_batch,
    compact_frame,
    hello_frame,
    state_frame,
    streams_of,
    trades_frame,
)

logger = logging.getLogger(__name__)

StateReader = Callable[[], list[dict[str, Any]]]
STATE_TIMEOUT = 5.0   # s for one read of the streams' state (Redis and the database)
MAX_COALESCE = 0.5    # s a frame may wait for the pages still writing the previous one


@dataclass(frozen=True)
class HubConfig:
    max_pages: int = 2500          # LIVE_MAX_CONNECTIONS
    max_pages_per_address: int = 50  # LIVE_MAX_CONNECTIONS_PER_ADDRESS: one client cannot take every slot
    queue_frames: int = 50         # LIVE_SEND_QUEUE
    flush_interval: float = 0.1    # LIVE_FLUSH_INTERVAL
    state_interval: float = 2.0    # LIVE_STATE_INTERVAL
    max_frame: int = 4096          # LIVE_MAX_FRAME (told to the page)
    starved_after: float = 10.0    # s a stream may have trades that the hub never got before the feed is re-joined
    # s between membership renewals, which also probe Redis (the layer's blocking read cannot time out,
    # channels_redis#422): None is a third of the layer's group_expiry, at most 10 s.
    renew_every: float | None = None
    redis_timeout: float = 5.0     # s a renewal may take before the feed counts as interrupted

    @classmethod
    def from_settings(cls) -> HubConfig:
        return cls(settings.LIVE_MAX_CONNECTIONS, settings.LIVE_MAX_CONNECTIONS_PER_ADDRESS, settings.LIVE_SEND_QUEUE,
                   settings.LIVE_FLUSH_INTERVAL, settings.LIVE_STATE_INTERVAL, settings.LIVE_MAX_FRAME,
                   max(10.0, 3 * settings.LIVE_STATE_INTERVAL))


@dataclass
class HubStats:
    pages: int = 0
    peak_pages: int = 0
    joined: int = 0
    refused: int = 0           # beyond LIVE_MAX_CONNECTIONS
    refused_address: int = 0   # beyond LIVE_MAX_CONNECTIONS_PER_ADDRESS
    dropped_slow: int = 0      # closed with CLOSE_TOO_SLOW
    too_big: int = 0           # closed for a frame over LIVE_MAX_FRAME (counted by the consumer)
    batches: int = 0
    trades: int = 0
    refused_trades: int = 0    # items of a batch that were not trades (re-validated: Redis is a boundary)
    frames: int = 0            # frames queued to pages (trades and state)
    feed_errors: int = 0
    starved: int = 0           # times a stream had trades the hub did not get (the membership is renewed)
    flushes: int = 0           # frames made per subscription (trades frames)
    paced_ms: int = 0          # time the frames waited for pages still writing the previous ones
    loop_lag_ms: int = 0       # the event loop's worst lateness over the last state period


class Hub:
    """`hub.join(symbol, send, close)` for each page; `start()` once; `stop()` when the process ends."""

    def __init__(self, layer: BaseChannelLayer | None, config: HubConfig, *,
                 read_state: StateReader = streams_state, write_stats: Callable[[dict[str, int]], None] | None =
                 write_live_stats, owns_layer: bool = False) -> None:
        self.layer = layer
        self._owns_layer = owns_layer  # its connections are closed when the hub stops
        self.config = config
        self.stats = HubStats()
        self.channel = ""
        self.failed: BaseException | None = None
        self._read_state = read_state
        self._write_stats = write_stats
        self._pages: dict[tuple[str | None, bool], set[Page]] = {}  # (symbol or every one, compact) -> pages
        self._pending: list[tuple[str, list[dict[str, Any]]]] = []  # (symbol, its trades) as they arrived
        self._streams: list[dict[str, Any]] | None = None
        self._registered_at: float | None = None      # monotonic time of the last confirmed membership
        self._live_since = 0.0                        # ... of the last time the feed became live
        self._trade_seen: dict[str, float] = {}       # symbol -> monotonic time its last trade arrived
        self._feed_failed_at: float | None = None
        self._register_now = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[None]] = set()
        self._backlog = Backlog()
        # The state is read (Redis, the database) on one thread of the hub's own, whose connection is closed
        # when the hub stops.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="live-hub")
        self._expiry = float(getattr(layer, "group_expiry", 86400))
        self._renew_every = config.renew_every or min(self._expiry / 3, 10.0)
        self._by_address: Counter[str] = Counter()  # live pages per client address

    # --- pages ------------------------------------------------------------------------------------------

    def join(self, symbol: str | None, send: Send, close: Close, *, compact: bool = False,
             address: str | None = None) -> Page | None:
        """A new page (not yet started: start it once the socket is accepted), or None when the process has
        its LIVE_MAX_CONNECTIONS pages already, or `address` its LIVE_MAX_CONNECTIONS_PER_ADDRESS (counted)."""
        if self.stats.pages >= self.config.max_pages:
            self.stats.refused += 1
            return None
        if address is not None and self._by_address[address] >= self.config.max_pages_per_address:
            self.stats.refused_address += 1
            return None
        page = Page(symbol, compact, send, close, limit=self.config.queue_frames, backlog=self._backlog,
                    address=address)
        if address is not None:
            self._by_address[address] += 1
        self._pages.setdefault((symbol, compact), set()).add(page)
        self.stats.pages += 1
        self.stats.joined += 1
        self.stats.peak_pages = max(self.stats.peak_pages, self.stats.pages)
        page.offer(OutFrame(hello_frame(symbol, self.config.state_interval, self.config.max_frame)))
        page.offer(OutFrame(self._state_frame(symbol)))
        return page

    def start_page(self, page: Page, direct: Direct | None = None) -> None:
        """Start writing to a joined page (once its socket is accepted), directly when the server allows."""
        page.start(self._page_failed, direct)

    def _page_failed(self, page: Page, error: BaseException) -> None:
        logger.error("writing to a live page failed: %s", describe(error), exc_info=error)
        self._drop(page, CLOSE_FEED_FAILED, "the live feed failed; reconnect")

    async def leave(self, page: Page) -> None:
        self._forget(page)
        await page.stop()

    def _forget(self, page: Page) -> bool:
        key = (page.symbol, page.compact)
        pages = self._pages.get(key)
        if pages is None or page not in pages:
            return False
        pages.discard(page)
        if not pages:
            del self._pages[key]
        if page.address is not None:
            self._by_address[page.address] -= 1
            if not self._by_address[page.address]:
                del self._by_address[page.address]
        self.stats.pages -= 1
        return True

    def _drop(self, page: Page, code: int, reason: str) -> None:
        """Close a page on a task of its own: the hub never waits for one page."""
        if not self._forget(page):
            return
        closer = asyncio.create_task(page.close(code, reason), name="live page close")
        self._closers.add(closer)
        closer.add_done_callback(self._closed)

    def _closed(self, closer: asyncio.Task[None]) -> None:
        self._closers.discard(closer)
        error = None if closer.cancelled() else closer.exception()
        if error is not None:
            logger.warning("closing a live page failed: %s", describe(error))

    def _offer(self, pages: set[Page], frame: OutFrame) -> None:
        for page in list(pages):
            if page.offer(frame):
                self.stats.frames += 1
                continue
            self.stats.dropped_slow += 1
            logger.info("dropped a live page %d frames behind (%d dropped so far)", self.config.queue_frames,
                        self.stats.dropped_slow)
            self._drop(page, CLOSE_TOO_SLOW, f"too slow: {self.config.queue_frames} frames behind; reconnect")

    # --- the feed ---------------------------------------------------------------------------------------

    @property
    def feed(self) -> str:
        """`live` while the membership is confirmed within its expiry and no receive failed since."""
        registered = self._registered_at
        if registered is None:
            return FEED_STARTING if self._feed_failed_at is None else FEED_INTERRUPTED
        if time.monotonic() - registered > self._expiry:
            return FEED_INTERRUPTED
        if self._feed_failed_at is not None and self._feed_failed_at >= registered:
            return FEED_INTERRUPTED
        return FEED_LIVE

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="live hub")

    async def stop(self) -> None:
        """Stop the feed, close every page (1001: they reconnect elsewhere), leave the group."""
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        await self._close_all(CLOSE_GOING_AWAY, "the server is restarting; reconnect")
        if self.layer is not None and self.channel:
            with contextlib.suppress(Exception):  # best effort: the membership expires by itself anyway
                async with asyncio.timeout(self.config.redis_timeout):
                    await self.layer.group_discard(ALL_TRADES_GROUP, self.channel)
        if self._owns_layer and isinstance(self.layer, RedisChannelLayer):  # the only layer with pools
            with contextlib.suppress(Exception):
                await self.layer.close_pools()
        await asyncio.get_running_loop().run_in_executor(self._thread, release_connections)
        self._thread.shutdown(wait=False)

    async def _close_all(self, code: int, reason: str) -> None:
        for page in [p for pages in self._pages.values() for p in pages]:
            self._drop(page, code, reason)
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)

    async def _run(self) -> None:
        """The hub's loops; an unexpected error ends them all, and every page is closed with 1011 so that
        it reconnects to a new hub and says so meanwhile (never a silent page)."""
        try:
            if self.layer is None:
                logger.warning("no channel layer configured: live pages get the state but no trades")
            else:
                self.channel = await self.layer.new_channel()
            async with asyncio.TaskGroup() as group:
                if self.layer is not None:
                    group.create_task(self._register_forever(), name="live hub membership")
                    group.create_task(self._feed_forever(), name="live hub feed")
                group.create_task(self._state_forever(), name="live hub state")
        except* Exception as errors:
            self.failed = errors.exceptions[0]
            logger.error("the live feed failed: %s; closing its %d pages", describe(self.failed), self.stats.pages,
                         exc_info=self.failed)
            await self._close_all(CLOSE_FEED_FAILED, "the live feed failed; reconnect")

    async def _register_forever(self) -> None:
        """Join (again) now, then every third of the expiry, or at once after the feed failed."""
        assert self.layer is not None
        backoff = RETRY["live hub"].backoff()
        while True:
            try:
                async with asyncio.timeout(self.config.redis_timeout):
                    await self.layer.group_add(ALL_TRADES_GROUP, self.channel)
            except Exception as exc:  # classified by _feed_lost: retried, logged loudly when not transient
                self._feed_lost("renewing the membership", exc)
                wait = backoff.next_delay()
            else:
                if self.feed != FEED_LIVE:
                    logger.info("live feed: joined %s as %s", ALL_TRADES_GROUP, self.channel)
                    self._live_since = time.monotonic()
                self._registered_at = time.monotonic()
                backoff.reset()
                wait = self._renew_every
            self._register_now.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._register_now.wait()

    async def _feed_forever(self) -> None:
        """Wait for trades, then at most once per LIVE_FLUSH_INTERVAL take all that waits in one round trip
        and make the frames: a Redis command or two per frame, not per batch (each costs a loopback
        write, tens of µs on a small VM; 1,000 batches a second ate a third of a core)."""
        assert self.layer is not None
        inbox = Inbox(self.layer, self.channel, timeout=self.config.redis_timeout)
        backoff = RETRY["live hub"].backoff()
        loop = asyncio.get_running_loop()
        last = float("-inf")
        while True:
            try:
                self._ingest_all(await inbox.receive_many())  # blocks until something comes
                wait = last + self.config.flush_interval - loop.time()
                if wait > 0 and inbox.bulk:  # (another layer is read a message at a time: no coalescing)
                    await asyncio.sleep(wait)
                paced = loop.time()
                await self._writers_caught_up(paced + MAX_COALESCE)
                self.stats.paced_ms += int((loop.time() - paced) * 1000)
                self._ingest_all(await inbox.receive_waiting())  # what came meanwhile
            except Exception as exc:  # classified by _feed_lost: retried, logged loudly when not transient
                self._feed_lost("receiving", exc)
                self._register_now.set()  # Redis may have restarted empty: join again as soon as it answers
                await asyncio.sleep(backoff.next_delay())
            else:
                backoff.reset()
            if self._pending:
                last = loop.time()
                self._flush()

    def _feed_lost(self, doing: str, exc: BaseException | None) -> None:
        """Counted, shown to the pages, logged once per outage (with the traceback when not transient)."""
        first = self.feed == FEED_LIVE or self.stats.feed_errors == 0
        self.stats.feed_errors += 1
        self._feed_failed_at = time.monotonic()
        if first:
            logger.warning("live feed interrupted while %s%s", doing, f": {describe(exc)}" if exc else "",
                           exc_info=None if exc is None or is_transient(exc) else exc)

    def _check_starved(self) -> None:
        """A stream that got trades well after the last one of its symbol reached the hub means the hub
        is missing them, whatever the cause (a membership expired by a host whose clock runs ahead, a Redis
        restarted empty, a full channel): say so to the pages and join again at once."""
        if self.feed != FEED_LIVE:
            return
        now = time.monotonic()
        for stream in self._streams or ():
            age = stream.get("last_trade_age")
            if stream["state"] != "connected" or age is None:
                continue
            seen = max(self._trade_seen.get(stream["symbol"], 0.0), self._live_since)
            if (now - age) - seen > self.config.starved_after:
                self.stats.starved += 1
                self._feed_lost(f"{stream['stream']} had trades for {self.config.starved_after:.0f} s that never "
                                "arrived (a lapsed membership? hosts' clocks apart?); joining again", None)
                self._register_now.set()
                return

    def _ingest_all(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self._ingest(message)

    def _ingest(self, message: dict[str, Any]) -> None:
        if message.get("type") != MESSAGE_TYPE:
            self.stats.refused_trades += 1
            return
        trades, refused = clean_batch(message.get("trades"))
        if refused:
            if self.stats.refused_trades == 0:
                logger.warning("live feed: %d items of a batch are not trades; skipped (counted)", refused)
            self.stats.refused_trades += refused
        if not trades:
            return
        self.stats.batches += 1
        self.stats.trades += len(trades)
        groups = by_symbol(trades)
        now = time.monotonic()
        for symbol, _ in groups:
            self._trade_seen[symbol] = now
        self._pending.extend(groups)

    async def _writers_caught_up(self, deadline: float) -> None:
        """Until at most a tenth of the pages are still writing the previous frame (or the deadline): under
        load the next frame then carries more trades, and the sends per trade, the cost that grows with the
        pages, fall. Pages that were behind already do not count (livepage.Backlog)."""
        backlog = self._backlog
        backlog.threshold = max(1, self.stats.pages // 10)
        loop = asyncio.get_running_loop()
        while backlog.writing > backlog.threshold and (left := deadline - loop.time()) > 0:
            backlog.low.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await backlog.low.wait()

    def _flush(self) -> None:
        """One frame per subscription, shared by its pages."""
        self.stats.flushes += 1
        self._backlog.next_frame()
        pending, self._pending = self._pending, []
        of_symbol: dict[str, list[list[dict[str, Any]]]] = {}
        for symbol, group in pending:
            of_symbol.setdefault(symbol, []).append(group)
        sent_ms = int(time.time() * 1000)
        for (subscribed, compact), pages in list(self._pages.items()):
            groups = [group for _, group in pending] if subscribed is None else of_symbol.get(subscribed)
            if groups:
                self._offer(pages, OutFrame(compact_frame(groups, sent_ms) if compact else trades_frame(groups)))

    # --- the state --------------------------------------------------------------------------------------

    async def _state_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._refresh_state()
            due = loop.time() + self.config.state_interval
            await asyncio.sleep(self.config.state_interval)
            self.stats.loop_lag_ms = int(max(0.0, loop.time() - due) * 1000)

    async def _refresh_state(self) -> None:
        try:
            async with asyncio.timeout(STATE_TIMEOUT):
                self._streams = await asyncio.get_running_loop().run_in_executor(self._thread, self._read_state)
        except Exception as exc:  # Redis or the database away: the pages say the state is unavailable
            if self._streams is not None:
                logger.warning("live feed: the streams' state cannot be read: %s", describe(exc),
                               exc_info=None if is_transient(exc) else exc)
            self._streams = None
        self._check_starved()
        frames: dict[str | None, OutFrame] = {}
        for (symbol, _), pages in list(self._pages.items()):
            if symbol not in frames:
                frames[symbol] = OutFrame(self._state_frame(symbol))
            self._offer(pages, frames[symbol])
        if self._write_stats is not None:
            stats = {**asdict(self.stats), "feed_live": int(self.feed == FEED_LIVE)}
            with contextlib.suppress(Exception):  # the stats are for tools; Redis being away is shown already
                async with asyncio.timeout(self.config.redis_timeout):
                    await asyncio.get_running_loop().run_in_executor(self._thread, self._write_stats, stats)

    def _state_frame(self, symbol: str | None) -> str:
        return state_frame(self.feed, streams_of(symbol, self._streams), int(time.time() * 1000))


_HUBS: dict[asyncio.AbstractEventLoop, Hub] = {}


def live_hub() -> Hub:
    """The running loop's hub, started on first use (and again after one failed)."""
    loop = asyncio.get_running_loop()
    hub = _HUBS.get(loop)
    if hub is None or hub.failed is not None:
        hub = _HUBS[loop] = Hub(_own_layer(), HubConfig.from_settings(), owns_layer=True)
        hub.start()
    return hub


def _own_layer() -> BaseChannelLayer | None:
    """A layer instance of the hub's own (its inbox then holds the hub's channel alone), from the settings."""
    try:
        return channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
    except KeyError:
        return None


async def stop_live_hub() -> None:
    """Stop the running loop's hub, if any (at the web process's shutdown; in tests)."""
    hub = _HUBS.pop(asyncio.get_running_loop(), None)
    if hub is not None:
        await hub.stop()


async def lifespan(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                   send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """ASGI lifespan: at shutdown the hub closes its pages and leaves the group at once."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await stop_live_hub()
            await send({"type": "lifespan.shutdown.complete"})
            return
