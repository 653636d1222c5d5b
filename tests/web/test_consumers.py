"""The browser's WebSocket and its process's live hub, on the real channels-redis layer and Redis.

Each test below failed on the consumer that joined a layer group per page (a frame of any
size was read and ignored, pages were never refused, a page that could not keep up was never dropped,
the layer had one member per page and kept them after abrupt ends, a membership lapsed after 24 h, and
the state was polled from /api/streams/ by every page).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
import time_machine
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from streams.binance.protocol import TRADE, Trade
from streams.binance.streamid import StreamId
from streams.broadcast import ALL_TRADES_GROUP, Broadcaster, trade_message
from streams.fake.proxy import tcp_proxy
from web.asgi import application
from web.live import hub as livehub
from web.live.hub import Hub, HubConfig, stop_live_hub
from web.live.wire import (
    CLOSE_SERVER_FULL,
    CLOSE_TOO_BIG,
    CLOSE_TOO_SLOW,
    FEED_INTERRUPTED,
    FEED_LIVE,
    expand_compact,
)
from workers.redis import sync_redis

ORIGIN = [(b"origin", b"http://localhost")]
GROUP_KEY = f"asgi:group:{ALL_TRADES_GROUP}"  # channels-redis's sorted set of the group's members


def trades(symbol: str, count: int = 2, first: int = 1) -> list[Trade]:
    return [Trade(symbol, TRADE, i, "1.50000000", "2.00000000", 1723161255342, 1723161255343, True)
            for i in range(first, first + count)]


async def broadcast(batch: list[Trade], layer: Any = None) -> None:
    """What a stream task does with a batch it handed on (streams.broadcast, unchanged)."""
    broadcaster = Broadcaster([ALL_TRADES_GROUP], per_symbol=True, layer=layer or get_channel_layer())
    broadcaster.start()
    broadcaster.offer(batch)
    await broadcaster.close()


async def until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Wait for `condition` with a deadline (yielding to the loop between checks)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return result


async def frames(page: WebsocketCommunicator, timeout: float = 10.0) -> AsyncIterator[Any]:
    while True:
        yield json.loads(await page.receive_from(timeout=timeout))


async def next_trades(page: WebsocketCommunicator) -> list[dict[str, Any]]:
    async for frame in frames(page):
        if isinstance(frame, list):
            return frame
    raise AssertionError("unreachable")


async def next_state(page: WebsocketCommunicator, feed: str | None = None) -> dict[str, Any]:
    async for frame in frames(page):
        if isinstance(frame, dict) and frame["type"] == "state" and feed in (None, frame["feed"]):
            return frame
    raise AssertionError("unreachable")


async def open_page(path: str = "/ws/trades/") -> WebsocketCommunicator:
    page = WebsocketCommunicator(application, path, headers=ORIGIN)
    connected, _ = await page.connect()
    assert connected
    return page


def members() -> set[bytes]:
    return set(cast("list[bytes]", sync_redis().zrange(GROUP_KEY, 0, -1)))  # without scores: the members


@pytest.fixture(autouse=True)
async def no_hub_left() -> AsyncIterator[None]:
    yield
    await stop_live_hub()


@pytest.fixture
def install_hub() -> Callable[..., Hub]:
    """A hub for this test's loop, as `live_hub()` would make it, with the given layer, state and config."""

    def install(layer: Any = None, read_state: Callable[[], list[dict[str, Any]]] = list, **config: Any) -> Hub:
        hub = Hub(layer or get_channel_layer(), HubConfig(**config), read_state=read_state, write_stats=None)
        livehub._HUBS[asyncio.get_running_loop()] = hub
        hub.start()
        return hub

    return install


async def test_a_symbol_page_gets_its_symbols_batches_as_json(install_hub: Callable[..., Hub]) -> None:
    hub = install_hub()
    btc = await open_page("/ws/trades/btcusdt/")
    everything = await open_page("/ws/trades/")
    try:
        hello = json.loads(await btc.receive_from(timeout=10))
        assert hello["type"] == "hello" and hello["symbol"] == "BTCUSDT"
        await until(lambda: hub.feed == FEED_LIVE)
        await btc.send_to(text_data='{"anything": "is ignored"}')
        await broadcast(trades("ETHUSDT"))
        await broadcast(trades("BTCUSDT", 3))
        seen: list[dict[str, Any]] = []
        while len(seen) < 5:
            seen += await next_trades(everything)
        assert [t["ticker_symbol"] for t in seen] == ["ETHUSDT"] * 2 + ["BTCUSDT"] * 3
        mine = await next_trades(btc)
        assert [t["trade_id"] for t in mine] == [1, 2, 3] and mine[0]["price"] == "1.50000000"
        assert set(mine[0]) == {"ticker_symbol", "channel", "trade_id", "price", "volume", "trade_ts", "event_ts",
                                "is_market_maker"}
    finally:
        await btc.disconnect()
        await everything.disconnect()


async def test_the_live_pages_compact_frames_carry_the_same_trades_in_a_fraction_of_the_bytes(
        install_hub: Callable[..., Hub]) -> None:
    # The bytes every page costs the web process (the kernel's share of a send is most of it at 2,000 pages).
    hub = install_hub()
    compact = await open_page("/ws/trades/btcusdt/?format=compact")
    plain = await open_page("/ws/trades/btcusdt/")
    await until(lambda: hub.feed == FEED_LIVE)
    sent = [Trade("BTCUSDT", TRADE, 3735683259 + i, f"{61837 + i}.63000000", "0.02000000", 1723161255342 + 3 * i,
                  1723161255345 + 3 * i, i % 3 == 0) for i in range(100)]
    await broadcast(sent)
    objects: list[dict[str, Any]] = []
    expanded: list[dict[str, Any]] = []
    sizes = {"plain": 0, "compact": 0}
    for name, page, out in (("plain", plain, objects), ("compact", compact, expanded)):
        while len(out) < len(sent):
            text = await page.receive_from(timeout=10)
            frame = json.loads(text)
            if isinstance(frame, list):
                out.extend(frame)
            elif frame["type"] == "trades":
                assert frame["n"] == sum(len(rows) for rows in frame["streams"].values())
                out.extend(expand_compact(frame))
            else:
                continue
            sizes[name] += len(text)
    assert expanded == objects == [trade_message(t) for t in sent]
    assert sizes["compact"] * 3 < sizes["plain"], sizes
    await compact.disconnect()
    await plain.disconnect()


async def test_a_foreign_origin_is_refused() -> None:
    intruder = WebsocketCommunicator(application, "/ws/trades/", headers=[(b"origin", b"http://evil.example")])
    connected, _ = await intruder.connect()
    assert not connected


async def test_a_malformed_symbol_is_refused_with_a_code() -> None:
    page = WebsocketCommunicator(application, "/ws/trades/btc-usdt/", headers=ORIGIN)
    connected, code = await page.connect()
    assert not connected and code == 4400


async def test_a_frame_over_the_limit_closes_the_page_with_1009_and_is_counted(install_hub: Callable[..., Hub]) -> None:
    # Before: any frame was read whole and ignored (16 MiB ones took the web process from 143 to 424 MB).
    hub = install_hub()
    page = await open_page()
    await page.send_to(text_data="x" * settings.LIVE_MAX_FRAME)  # at the limit: ignored
    await page.send_to(text_data="x" * (settings.LIVE_MAX_FRAME + 1))
    closed = await until_closed(page)
    assert closed["code"] == CLOSE_TOO_BIG and str(settings.LIVE_MAX_FRAME) in closed["reason"]
    assert hub.stats.too_big == 1 and hub.stats.pages == 0


async def until_closed(page: WebsocketCommunicator) -> dict[str, Any]:
    while True:
        output = await page.receive_output(timeout=10)
        if output["type"] == "websocket.close":
            return dict(output)


async def test_pages_beyond_the_cap_are_refused_with_1013_and_counted(install_hub: Callable[..., Hub]) -> None:
    hub = install_hub(max_pages=3)
    pages = [await open_page() for _ in range(3)]
    extra = WebsocketCommunicator(application, "/ws/trades/", headers=ORIGIN)
    connected, _ = await extra.connect()
    assert connected  # accepted, so that the page can read why...
    closed = await until_closed(extra)  # ...and then closed: "try again later"
    assert closed["code"] == CLOSE_SERVER_FULL and "try again later" in closed["reason"]
    assert hub.stats.refused == 1 and hub.stats.pages == 3
    await pages[0].disconnect()
    await until(lambda: hub.stats.pages == 2)
    again = await open_page()  # room again
    assert hub.stats.pages == 3
    for page in [*pages[1:], again]:
        await page.disconnect()


async def test_a_slow_page_is_dropped_with_a_reason_and_counted_while_the_others_get_every_trade(
        clean_redis: None, install_hub: Callable[..., Hub]) -> None:
    # Before: a page that could not keep up filled its layer channel; the batches it missed were dropped
    # silently, and it kept its membership.
    hub = install_hub(queue_frames=3, flush_interval=0.0)
    never = asyncio.Event()  # the slow page's socket never drains
    closed: list[tuple[int, str]] = []
    got: list[dict[str, Any]] = []

    async def stuck(frame: str) -> None:
        await never.wait()

    async def fast(frame: str) -> None:
        parsed = json.loads(frame)
        if isinstance(parsed, list):
            got.extend(parsed)

    async def record_close(code: int, reason: str) -> None:
        closed.append((code, reason))

    async def must_not_close(code: int, reason: str) -> None:
        raise AssertionError(f"the fast page was closed: {code} {reason}")

    slow_page = hub.join("BTCUSDT", stuck, record_close)
    fast_page = hub.join("BTCUSDT", fast, must_not_close)
    assert slow_page is not None and fast_page is not None
    hub.start_page(slow_page)
    hub.start_page(fast_page)
    await until(lambda: hub.feed == FEED_LIVE)
    sent = 0
    deadline = time.monotonic() + 20
    while not closed:
        assert time.monotonic() < deadline, "the slow page was never dropped"
        await broadcast(trades("BTCUSDT", 1, first=sent + 1))
        sent += 1

        def caught_up(count: int = sent) -> bool:  # the fast page keeps up, trade by trade
            return len(got) == count

        await until(caught_up)
    assert closed == [(CLOSE_TOO_SLOW, "too slow: 3 frames behind; reconnect")]
    assert hub.stats.dropped_slow == 1 and hub.stats.pages == 1
    for _ in range(5):
        await broadcast(trades("BTCUSDT", 1, first=sent + 1))
        sent += 1
    await until(lambda: len(got) == sent)
    assert [t["trade_id"] for t in got] == list(range(1, sent + 1))
    await hub.leave(fast_page)


async def test_fifty_pages_coming_and_going_leave_nothing_in_redis(clean_redis: None,
                                                                   install_hub: Callable[..., Hub]) -> None:
    # Before: one group member per page (the layer's pool of 100 connections ran out at ~500 pages), and
    # a page whose disconnect never ran (396 of 496 under load) stayed a member for 24 h.
    hub = install_hub()
    await until(lambda: hub.feed == FEED_LIVE)
    assert members() == {hub.channel.encode()}
    pages = [await open_page(f"/ws/trades/{'btcusdt/' if i % 2 else ''}") for i in range(50)]
    assert members() == {hub.channel.encode()} and hub.stats.pages == 50  # one member per process
    for i, page in enumerate(pages):
        if i % 2:
            await page.disconnect()  # a clean close
        else:
            page.future.cancel()  # the connection's handler dies without running its disconnect
            await asyncio.gather(page.future, return_exceptions=True)
    await until(lambda: hub.stats.pages == 0)
    assert members() == {hub.channel.encode()}
    await stop_live_hub_for(hub)
    assert members() == set()
    assert not [k for k in sync_redis().scan_iter(match="asgi:*") if not k.startswith(b"asgi:specific")]


async def stop_live_hub_for(hub: Hub) -> None:
    livehub._HUBS.pop(asyncio.get_running_loop(), None)
    await hub.stop()


async def test_a_page_open_for_days_keeps_receiving(clean_redis: None, install_hub: Callable[..., Hub]) -> None:
    # Before: the page joined the group once, channels-redis forgets members after group_expiry (24 h):
    # a page open longer silently stopped receiving while it still said "live".
    layer = RedisChannelLayer(hosts=[{"address": settings.REDIS_URL, "socket_timeout": None}], group_expiry=86400)
    hub = install_hub(layer, renew_every=0.05)
    page = await open_page("/ws/trades/btcusdt/")
    await until(lambda: hub.feed == FEED_LIVE)
    with time_machine.travel(time.time() + 3 * 86400, tick=True):  # three days later (wall clock only)
        stamp = time.time()
        await until(lambda: (sync_redis().zscore(GROUP_KEY, hub.channel) or 0) >= int(stamp))  # renewed
        await broadcast(trades("BTCUSDT", 2), layer)
        assert [t["trade_id"] for t in await next_trades(page)] == [1, 2]
    await page.disconnect()


async def test_the_state_is_pushed_to_the_page_with_only_what_it_shows(install_hub: Callable[..., Hub]) -> None:
    # Before: every page polled /api/streams/ every 3 s (about 400 tabs saturated the web process) and got
    # everything it says (workers, errors, dead letters).
    state = [{"stream": "btcusdt@trade", "symbol": "BTCUSDT", "state": "connected", "trades_per_s": 12.5,
              "lag_ms": 15, "last_trade_age": 0.1},
             {"stream": "ethusdt@trade", "symbol": "ETHUSDT", "state": "stalled", "trades_per_s": 0.0,
              "lag_ms": None, "last_trade_age": 90.0}]
    reads = 0

    def read_state() -> list[dict[str, Any]]:
        nonlocal reads
        reads += 1
        return state

    hub = install_hub(read_state=read_state, state_interval=0.05)
    btc = await open_page("/ws/trades/btcusdt/")
    everything = await open_page()
    pushed = await next_state(btc, FEED_LIVE)
    assert pushed["streams"] == [{"stream": "btcusdt@trade", "symbol": "BTCUSDT", "state": "connected",
                                  "trades_per_s": 12.5, "lag_ms": 15}]
    assert [s["state"] for s in (await next_state(everything, FEED_LIVE))["streams"]] == ["connected", "stalled"]
    state[0] = {**state[0], "state": "stalled", "trades_per_s": 0.0, "lag_ms": None}
    async for frame in frames(btc):
        if isinstance(frame, dict) and frame["type"] == "state" and frame["streams"][0]["state"] == "stalled":
            break
    before = reads
    await until(lambda: reads >= before + 3)
    assert hub.stats.pages == 2  # read once per push for every page of the process, not once per page
    await btc.disconnect()
    await everything.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_the_state_comes_from_the_streams_statuses(clean_redis: None, settings: Any) -> None:
    from asgiref.sync import sync_to_async
    from django.db import connections

    from workers.registry import enable_stream
    from workers.status import StreamStatus, write_status_now

    settings.LIVE_STATE_INTERVAL = 0.1
    await sync_to_async(enable_stream)("BTCUSDT", TRADE)
    write_status_now(sync_redis(), StreamId.parse("btcusdt@trade"),
                     StreamStatus(state="connected", worker="w1", trades_per_s=7.25, lag_ms=21, last_frame_age=0.0),
                     ttl=60)
    page = await open_page("/ws/trades/btcusdt/")
    async for frame in frames(page):
        if isinstance(frame, dict) and frame["type"] == "state" and frame["streams"]:
            assert frame["streams"] == [{"stream": "btcusdt@trade", "symbol": "BTCUSDT", "state": "connected",
                                         "trades_per_s": 7.2, "lag_ms": 21}]
            break
    await page.disconnect()
    await stop_live_hub()  # closes the hub thread's database connection
    await sync_to_async(connections.close_all)()  # ...and enable_stream's


async def test_a_page_is_told_when_the_feed_is_interrupted_and_when_it_is_back(
        clean_redis: None, install_hub: Callable[..., Hub]) -> None:
    # Before: a page with a dead feed kept saying "live". The harder case: Redis goes silent without
    # closing anything (a partition), and the layer's blocking read has no timeout (channels_redis#422).
    with tcp_proxy("127.0.0.1", 6379) as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}/{settings.REDIS_URL.rsplit('/', 1)[-1]}"
        layer = RedisChannelLayer(hosts=[{"address": proxied, "socket_timeout": None}])
        hub = install_hub(layer, state_interval=0.05, renew_every=0.1, redis_timeout=0.5)
        page = await open_page("/ws/trades/btcusdt/")
        await next_state(page, FEED_LIVE)
        proxy.freeze()  # Redis silent for this web process
        await next_state(page, FEED_INTERRUPTED)
        proxy.restore()
        await next_state(page, FEED_LIVE)
        await broadcast(trades("BTCUSDT", 2))
        assert [t["trade_id"] for t in await next_trades(page)] == [1, 2]
        assert hub.stats.feed_errors >= 1
        await page.disconnect()
        await stop_live_hub_for(hub)
        await layer.close_pools()


async def test_a_hub_that_misses_trades_says_so_and_joins_again(clean_redis: None,
                                                                install_hub: Callable[..., Hub]) -> None:
    # A membership removed behind the hub's back (a host whose clock runs ahead expires it, a Redis
    # restarted empty): the stream reports trades that never arrive. The page is told, the hub joins again.
    last_sent = time.monotonic()  # when the stream last got a trade (what its status says)

    def read_state() -> list[dict[str, Any]]:
        return [{"stream": "btcusdt@trade", "symbol": "BTCUSDT", "state": "connected", "trades_per_s": 5.0,
                 "lag_ms": 10, "last_trade_age": time.monotonic() - last_sent}]

    async def trade(number: int) -> None:
        nonlocal last_sent
        await broadcast(trades("BTCUSDT", 1, first=number))
        last_sent = time.monotonic()

    hub = install_hub(read_state=read_state, state_interval=0.05, starved_after=0.3)
    page = await open_page("/ws/trades/btcusdt/")
    await until(lambda: hub.feed == FEED_LIVE)
    await trade(1)
    assert [t["trade_id"] for t in await next_trades(page)] == [1]
    sync_redis().zrem(GROUP_KEY, hub.channel)  # the membership is gone; the hub's renewal is minutes away
    number = 1
    while hub.stats.starved == 0:  # the stream goes on trading; none of it reaches the hub
        number += 1
        await trade(number)
        await asyncio.sleep(0.05)  # the market's pace, not a synchronisation
    await next_state(page, FEED_INTERRUPTED)
    await until(lambda: hub.channel.encode() in members())  # joined again at once
    await next_state(page, FEED_LIVE)
    await trade(100)
    assert [t["trade_id"] for t in await next_trades(page)] == [100]
    await page.disconnect()


async def test_batches_that_are_not_trades_are_refused_and_counted(install_hub: Callable[..., Hub]) -> None:
    # Redis is a trust boundary: whoever can write to it could push anything to every page.
    hub = install_hub()
    page = await open_page()
    await until(lambda: hub.feed == FEED_LIVE)
    layer = get_channel_layer()
    assert layer is not None
    good = json.dumps([{"ticker_symbol": "BTCUSDT", "channel": "trade", "trade_id": 9, "price": "1.5",
                        "volume": "2", "trade_ts": 1, "event_ts": 2, "is_market_maker": False}])
    bad = json.dumps([{"ticker_symbol": "<script>", "channel": "trade", "trade_id": 1, "price": "1", "volume": "1",
                       "trade_ts": 1, "event_ts": 2, "is_market_maker": False}, {"trade_id": "x"}])
    await layer.group_send(ALL_TRADES_GROUP, {"type": "trades.batch", "count": 2, "trades": bad})
    await layer.group_send(ALL_TRADES_GROUP, {"type": "trades.batch", "count": 1, "trades": "not json"})
    await layer.group_send(ALL_TRADES_GROUP, {"type": "trades.batch", "count": 1, "trades": good})
    assert [t["trade_id"] for t in await next_trades(page)] == [9]
    assert hub.stats.refused_trades == 3
    await page.disconnect()


async def from_address(address: str) -> WebsocketCommunicator:
    page = WebsocketCommunicator(application, "/ws/trades/", headers=ORIGIN)
    page.scope["client"] = (address, 40000)
    connected, _ = await page.connect()
    assert connected
    return page


async def test_one_address_cannot_take_every_live_page_slot(install_hub: Callable[..., Hub]) -> None:
    # Seen: the per-process cap alone let one client hold every slot of a web process.
    hub = install_hub(max_pages=10, max_pages_per_address=2)
    mine = [await from_address("198.51.100.7") for _ in range(2)]
    third = await from_address("198.51.100.7")
    closed = await until_closed(third)
    assert closed["code"] == CLOSE_SERVER_FULL and "2 live pages from your address" in closed["reason"]
    other = await from_address("198.51.100.8")  # another client still gets in
    assert hub.stats.refused_address == 1 and hub.stats.pages == 3
    await mine[0].disconnect()
    await until(lambda: hub.stats.pages == 2)
    again = await from_address("198.51.100.7")  # its slot is free again
    assert hub.stats.pages == 3
    for page in [mine[1], other, again]:
        await page.disconnect()
