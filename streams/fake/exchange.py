"""The fake exchange: markets that trade on a clock, the WS and REST servers, faults, and a thread runner."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from streams.binance.protocol import Trade
from streams.fake.archive import FakeArchive
from streams.fake.faults import DEFAULT_COUNTS, Fault, FaultRates, fault_from
from streams.fake.market import Market
from streams.fake.rest import RestServer
from streams.fake.state import Stats
from streams.fake.ws import WsServer

logger = logging.getLogger(__name__)

T = TypeVar("T")
_TICK: Final = 0.02  # seconds between market ticks
_FAULT_TICK: Final = 0.1  # seconds between random-fault draws
_CALL_TIMEOUT: Final = 60.0
# exchangeInfo's `status` of a symbol (enums.md, "Symbol status"); only TRADING symbols make trades.
TRADING: Final = "TRADING"
SYMBOL_STATUSES: Final = (TRADING, "END_OF_DAY", "HALT", "BREAK", "CANCEL_ONLY")


class FakeExchange:
    """A Binance-like exchange on loopback: WS streams, REST market data, a record, and faults on demand."""

    def __init__(
        self,
        symbols: Mapping[str, float] | None = None,
        *,
        seed: int = 1,
        host: str = "127.0.0.1",
        ws_port: int = 0,
        rest_port: int = 0,
        ping_interval: float = 20.0,
        pong_timeout: float = 60.0,
        max_lifetime: float = 24 * 3600.0,
        message_limit: int = 5,
        weight_limit: int = 6000,
        weight_window: float = 60.0,
        connection_limit: int = 300,
        connection_window: float = 300.0,
        faults: FaultRates | None = None,
        send_queue_limit: int = 10_000,
        replay: str | Path | None = None,
        history_from: date | None = None,
        history_rate: float = 0.01,
        archive_delay: float = 0.0,
    ) -> None:
        symbols = {"BTCUSDT": 10.0} if symbols is None else symbols
        for symbol, rate in symbols.items():
            # Upper-case letters and digits; not only ASCII ones: the real exchange lists names such as 币安人生USDT,
            # which a client's name rules may refuse (the collector's do).
            if not (isinstance(symbol, str) and symbol.isalnum() and symbol == symbol.upper()
                    and any(c.isupper() for c in symbol)):
                raise ValueError(f"symbol {symbol!r} must be upper-case letters and digits, like BTCUSDT")
            if not isinstance(rate, int | float) or rate < 0:
                raise ValueError(f"trade rate {rate!r} for {symbol} must be a number >= 0")
        for name, value in (
            ("ping_interval", ping_interval),
            ("pong_timeout", pong_timeout),
            ("max_lifetime", max_lifetime),
            ("weight_window", weight_window),
            ("connection_window", connection_window),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.seed = seed
        self.rates = dict(symbols)
        self.markets = {symbol: Market(symbol, seed, replay) for symbol in symbols}
        self.statuses = dict.fromkeys(symbols, TRADING)  # exchangeInfo's `status` (set_status)
        if history_from is not None:
            # Past trades (midnight UTC of `history_from` until now), ids consecutive up to the live ones:
            # the archive, historicalTrades and the streams all tell the same story.
            start = int(datetime(history_from.year, history_from.month, history_from.day, tzinfo=UTC).timestamp())
            for market in self.markets.values():
                market.make_history(start * 1000, _now_ms(), history_rate)
        self.archive = FakeArchive(self.markets, publish_delay=archive_delay)
        self.fault_rates = faults or FaultRates()
        self._stats = Stats()
        self._ws = WsServer(
            self._stats,
            host=host,
            port=ws_port,
            ping_interval=ping_interval,
            pong_timeout=pong_timeout,
            max_lifetime=max_lifetime,
            message_limit=message_limit,
            connection_limit=connection_limit,
            connection_window=connection_window,
            send_queue_limit=send_queue_limit,
            is_down=self.is_down,
            market_of=self.markets.get,
        )
        self._rest = RestServer(self, host, rest_port, weight_limit, weight_window)
        self.host = host
        self._down_until: float | None = None
        self._calm = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        await self._ws.start()
        await self._rest.start()
        self._spawn(self._trade_forever())
        if self.fault_rates.items():
            self._spawn(self._random_faults())
        logger.info("fake exchange up: %s %s symbols=%s", self.ws_url, self.rest_url, self.rates)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._ws.stop()
        await self._rest.stop()
        logger.info("fake exchange stopped")

    async def __aenter__(self) -> FakeExchange:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self._ws.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self._rest.port}"

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _in_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the exchange's loop: directly when already there, else from another thread."""
        loop = self._loop
        if loop is None or loop.is_closed() or threading.get_ident() == self._loop_thread:
            return fn(*args)

        async def call() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=_CALL_TIMEOUT)

    # --- the market --------------------------------------------------------------------------

    async def _trade_forever(self) -> None:
        """Make trades at each symbol's rate by elapsed loop time, whether anyone listens or not."""
        loop = asyncio.get_running_loop()
        last, owed = loop.time(), dict.fromkeys(self.rates, 0.0)
        while True:
            await asyncio.sleep(_TICK)
            now = loop.time()
            elapsed, last = now - last, now
            for symbol, rate in self.rates.items():
                if self.statuses[symbol] != TRADING:
                    owed[symbol] = 0.0  # no trades now, and no catching up when it resumes
                    continue
                owed[symbol] = owed.get(symbol, 0.0) + rate * elapsed
                due = int(owed[symbol])
                if due > 0:
                    trades, aggs = self.markets[symbol].make(due, _now_ms(), whole_orders=True)
                    owed[symbol] -= len(trades)
                    self._publish(symbol, trades, aggs)

    def set_rates(self, rates: Mapping[str, float]) -> None:
        """Change the trade rates of listed symbols from now on (a quiet market that gets busy)."""
        for symbol, rate in rates.items():
            self._market(symbol)
            if not isinstance(rate, int | float) or rate < 0:
                raise ValueError(f"trade rate {rate!r} for {symbol} must be a number >= 0")

        def apply() -> None:
            self.rates.update(rates)

        self._in_loop(apply)

    def _publish(self, symbol: str, trades: list[Trade], aggs: list[Trade], bulk: bool = False) -> None:
        self._ws.publish(f"{symbol.lower()}@trade", trades, bulk)
        self._ws.publish(f"{symbol.lower()}@aggTrade", aggs, bulk)

    def _market(self, symbol: str) -> Market:
        market = self.markets.get(symbol)
        if market is None:
            raise ValueError(f"unknown symbol {symbol!r}; the exchange lists {', '.join(self.markets)}")
        return market

    def set_status(self, symbol: str, status: str) -> None:
        """Set the symbol's exchangeInfo `status` (a BREAK, a HALT, TRADING again); only TRADING symbols trade
        on their own (make_trades still makes trades on demand)."""
        self._market(symbol)
        if status not in SYMBOL_STATUSES:
            raise ValueError(f"unknown symbol status {status!r}; one of {', '.join(SYMBOL_STATUSES)}")

        def change() -> None:
            self.statuses[symbol] = status

        self._in_loop(change)

    def make_trades(self, symbol: str, count: int) -> list[Trade]:
        """Make `count` trades now (sent to subscribers, added to the record) and return them."""
        market = self._market(symbol)

        def make() -> list[Trade]:
            trades, aggs = market.make(count, _now_ms())
            self._publish(symbol, trades, aggs)
            return trades

        return self._in_loop(make)

    def burst(self, symbol: str, count: int) -> list[Trade]:
        """Make `count` trades at once and push them to subscribers as pre-encoded frames (benchmarks)."""
        market = self._market(symbol)

        def make() -> list[Trade]:
            trades, aggs = market.make(count, _now_ms())
            self._publish(symbol, trades, aggs, bulk=True)
            return trades

        return self._in_loop(make)

    def record(self, symbol: str) -> list[Trade]:
        """Every trade made for `symbol` (channel "trade"), ids consecutive."""
        market = self._market(symbol)
        return self._in_loop(lambda: list(market.trades))

    def agg_record(self, symbol: str) -> list[Trade]:
        """Every aggregate trade made for `symbol` (channel "aggTrade"), agg ids consecutive."""
        market = self._market(symbol)
        return self._in_loop(lambda: list(market.agg_trades))

    # --- observation -------------------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        """The live counters on the exchange's loop; a snapshot from any other thread."""
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            return self._in_loop(lambda: copy.deepcopy(self._stats))
        return self._stats

    def active_connections(self, stream: str | None = None) -> int:
        """Open connections, or those subscribed to `stream` (e.g. "btcusdt@trade")."""
        return self._in_loop(self._ws.active_connections, stream)

    # --- faults ------------------------------------------------------------------------------

    def calm(self, calm: bool = True) -> None:
        """Pause the random faults (a soak's last minutes), or resume them."""
        self._calm = calm

    def is_down(self) -> bool:
        return self._down_until is not None and time.monotonic() < self._down_until

    def inject(self, kind: str, symbol: str | None = None, **params: Any) -> int:
        """Inject a fault now; returns how many connections it hit (see faults.py for the kinds)."""
        fault = fault_from(kind, symbol, **params)
        return self._in_loop(self._apply, fault)

    def _apply(self, fault: Fault) -> int:
        if fault.kind == "rest_429":
            self._stats.faults[fault.kind] += 1
            self._rest.forced_429 += fault.count
            return 0
        if fault.kind == "rest_garbage":
            self._stats.faults[fault.kind] += 1
            self._rest.forced_garbage += fault.count
            return 0
        if fault.kind == "up":
            self._down_until = None
            return 0
        targets = [s for s in self._ws.sessions if s.closing is None and s.has_symbol(fault.symbol)]
        if fault.kind == "down":
            self._stats.faults[fault.kind] += 1
            self._down_until = math.inf if fault.duration is None else time.monotonic() + fault.duration
            targets = [s for s in self._ws.sessions if s.closing is None]
            for session in targets:
                session.disconnect("down")
            return len(targets)
        for session in targets:
            session.apply(fault)
        return len(targets)

    async def _random_faults(self) -> None:
        """Faults at their FaultRates from a seeded RNG: per connection, and per exchange (rest_garbage).

        Only rates above zero draw from the RNG, so a seed gives the same faults as before a new kind existed.
        """
        rng = random.Random(f"{self.seed}:faults")
        per_connection, per_exchange = self.fault_rates.per_connection(), self.fault_rates.per_exchange()
        while True:
            await asyncio.sleep(_FAULT_TICK)
            if self._calm:
                continue
            for session in sorted(self._ws.sessions, key=lambda s: s.opened):
                for kind, rate in per_connection:
                    if session.closing is None and rng.random() < rate * _FAULT_TICK:
                        code = rng.choice((1000, 1001, 1011))
                        session.apply(Fault(kind, code=code, count=DEFAULT_COUNTS.get(kind, 1)))
            for kind, rate in per_exchange:
                if rng.random() < rate * _FAULT_TICK:
                    self._apply(Fault(kind, count=DEFAULT_COUNTS.get(kind, 1)))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@contextlib.contextmanager
def running_exchange(**kwargs: Any) -> Iterator[FakeExchange]:
    """A FakeExchange on its own event loop in a background thread, for synchronous tests."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-exchange", daemon=True)
    thread.start()
    exchange = FakeExchange(**kwargs)
    try:
        asyncio.run_coroutine_threadsafe(exchange.start(), loop).result(timeout=_CALL_TIMEOUT)
        yield exchange
    finally:
        try:
            asyncio.run_coroutine_threadsafe(exchange.stop(), loop).result(timeout=_CALL_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_CALL_TIMEOUT)
            loop.close()
