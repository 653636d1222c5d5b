"""The fake market: a deterministic trade generator per symbol and the record of every trade it made."""

from __future__ import annotations

import bisect
import gzip
import logging
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import orjson

from streams.binance.protocol import AGG_TRADE, TRADE, Trade

logger = logging.getLogger(__name__)

# Binance quotes prices and quantities with 8 decimals ("61837.63000000"); we keep them as integers
# in units of 1e-8 so the random walk is exact and the text is always well formed.
SCALE: Final = 10**8
_QUOTE_ASSETS: Final = ("FDUSD", "USDT", "USDC", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")
_REPLAY_LIMIT: Final = 200_000


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """What the exchangeInfo endpoint says about a symbol, and where its price walk starts."""

    symbol: str
    base_asset: str
    quote_asset: str
    start_price: int  # in 1e-8 units
    tick_size: int  # in 1e-8 units
    step_size: int  # in 1e-8 units
    mean_lots: int  # mean quantity of one fill, in steps


_KNOWN: Final = {
    "BTCUSDT": SymbolSpec("BTCUSDT", "BTC", "USDT", 61_837_63000000, 1_000_000, 1_000, 60),
    "ETHUSDT": SymbolSpec("ETHUSDT", "ETH", "USDT", 2_683_80000000, 1_000_000, 10_000, 80),
    "BNBUSDT": SymbolSpec("BNBUSDT", "BNB", "USDT", 512_30000000, 1_000_000, 100_000, 30),
}


def symbol_spec(symbol: str) -> SymbolSpec:
    """The spec of a known symbol, or a plausible one derived from the name (deterministic)."""
    if symbol in _KNOWN:
        return _KNOWN[symbol]
    rng = random.Random(f"spec:{symbol}")
    quote = next((q for q in _QUOTE_ASSETS if symbol.endswith(q) and len(symbol) > len(q)), symbol[-3:])
    price = rng.randrange(1, 5_000) * SCALE
    return SymbolSpec(symbol, symbol[: -len(quote)], quote, price, 1_000_000, 100_000, 50)


def decimal_text(units: int) -> str:
    """1e-8 units as Binance writes them: `"61837.63000000"`."""
    return f"{units // SCALE}.{units % SCALE:08d}"


def micros(ms: int) -> int:
    """A microsecond timestamp inside millisecond `ms` (timeUnit=MICROSECOND); same for equal `ms`."""
    return ms * 1000 + (ms * 7919) % 1000


def quote_quantity(trade: Trade) -> str:
    """price x qty with 8 decimals, as `quoteQty` in the REST rows."""
    return f"{(Decimal(trade.price_text) * Decimal(trade.quantity_text)):.8f}"


Fill = tuple[int, int, bool, int]  # price, quantity (1e-8 units), buyer is maker, taker-order number


class Market:
    """One symbol: a random walk of taker orders, each filled against one or more makers.

    The sequence of fills (ids, prices, quantities, maker flags, order grouping) depends only on
    (seed, symbol); times are wall clock. An aggTrade aggregates the fills of one taker order at one
    price made in the same call (spec: "Aggregate Trade Streams"), so a `make(n)` that stops inside an
    order splits that order's aggregate in two.
    """

    def __init__(self, symbol: str, seed: int, replay: str | Path | None = None) -> None:
        self.symbol = symbol
        self.spec = symbol_spec(symbol)
        self._rng = random.Random(f"{seed}:{symbol}")
        self._history_clock = random.Random(f"{seed}:{symbol}:history")
        self.first_id = self._rng.randrange(10**9, 4 * 10**9)
        self.first_agg_id = self._rng.randrange(self.first_id // 2, self.first_id)
        self.trades: list[Trade] = []
        self.agg_trades: list[Trade] = []
        self._price = self.spec.start_price
        self._order = 0
        self._pending: deque[Fill] = deque()
        self._last_ms = 0
        self._replay: Iterator[list[tuple[int, int, bool]]] | None = None
        if replay is not None:
            self._replay = _cycle(replay_orders(replay, symbol))

    @property
    def next_id(self) -> int:
        return self.first_id + len(self.trades)

    @property
    def next_agg_id(self) -> int:
        return self.first_agg_id + len(self.agg_trades)

    def make(self, count: int, now_ms: int, whole_orders: bool = False) -> tuple[list[Trade], list[Trade]]:
        """Make `count` trades at `now_ms` (more if `whole_orders` finishes the last order)."""
        fills: list[Fill] = []
        while len(fills) < count or (whole_orders and self._pending):
            if not self._pending:
                self._pending.extend(self._next_order())
            fills.append(self._pending.popleft())
        return self._record(fills, now_ms)

    def make_history(self, start_ms: int, end_ms: int, rate: float) -> int:
        """Trades of the past, made before any live one: whole taker orders from `start_ms` until `end_ms`,
        `rate` trades a second on average; returns how many. The gaps come from their own seeded RNG, so a
        past day's trades do not depend on when the history ends; the order that would cross `end_ms` is
        the live market's first."""
        if self.trades:
            raise ValueError("history comes before the first live trade")
        if not rate > 0:
            raise ValueError(f"history rate must be > 0 trades per second, got {rate!r}")
        made, now = 0, float(start_ms)
        while True:
            fills = self._next_order()
            now += self._history_clock.expovariate(rate / len(fills)) * 1000.0
            if now >= end_ms:
                self._pending.extend(fills)
                return made
            made += len(self._record(fills, int(now))[0])

    def _record(self, fills: list[Fill], now_ms: int) -> tuple[list[Trade], list[Trade]]:
        trade_ts = self._last_ms = max(now_ms, self._last_ms)  # never back in time
        event_ts = trade_ts + 2
        symbol, trade_id = self.symbol, self.next_id
        trades = [
            Trade(symbol, TRADE, trade_id + i, decimal_text(p), decimal_text(q), trade_ts, event_ts, m)
            for i, (p, q, m, _order) in enumerate(fills)
        ]
        self.trades.extend(trades)
        aggs: list[Trade] = []
        start = 0
        for i in range(1, len(fills) + 1):
            if i == len(fills) or fills[i][3] != fills[start][3] or fills[i][0] != fills[start][0]:
                quantity = sum(f[1] for f in fills[start:i])
                aggs.append(
                    Trade(
                        symbol,
                        AGG_TRADE,
                        self.first_agg_id + len(self.agg_trades) + len(aggs),
                        decimal_text(fills[start][0]),
                        decimal_text(quantity),
                        trade_ts,
                        event_ts,
                        fills[start][2],
                        trade_id + start,
                        trade_id + i - 1,
                    )
                )
                start = i
        self.agg_trades.extend(aggs)
        return trades, aggs

    def _next_order(self) -> list[Fill]:
        self._order += 1
        if self._replay is not None:
            return [(p, q, m, self._order) for p, q, m in next(self._replay)]
        rng, spec = self._rng, self.spec
        buyer_is_maker = rng.random() < 0.5  # a sell taker order hits the bids
        self._price = max(
            spec.tick_size, self._price + rng.choice((-2, -1, -1, 0, 0, 0, 1, 1, 2)) * spec.tick_size
        )
        fills: list[Fill] = []
        for _ in range(1 + min(int(rng.expovariate(0.8)), 11)):
            lots = 1 + int(rng.expovariate(1 / spec.mean_lots))
            fills.append((self._price, lots * spec.step_size, buyer_is_maker, self._order))
            if rng.random() < 0.25:  # the taker order walks the book: sells fill lower, buys higher
                step = -spec.tick_size if buyer_is_maker else spec.tick_size
                self._price = max(spec.tick_size, self._price + step)
        return fills

    # --- lookups for the REST endpoints (rest-api.md "Old trade lookup", "Compressed/Aggregate trades")

    def trades_from(self, from_id: int | None, limit: int) -> list[Trade]:
        if from_id is None:
            return self.trades[-limit:] if limit else []
        start = max(0, from_id - self.first_id)
        return self.trades[start : start + limit]

    def aggs_from(self, from_id: int, limit: int) -> list[Trade]:
        start = max(0, from_id - self.first_agg_id)
        return self.agg_trades[start : start + limit]

    def aggs_between(self, start_ms: int | None, end_ms: int | None, limit: int) -> list[Trade]:
        """Oldest from start_ms (not past end_ms), or the most recent up to end_ms (rest-api.md)."""
        aggs = self.agg_trades
        hi = len(aggs) if end_ms is None else bisect.bisect_right(aggs, end_ms, key=_trade_ts)
        if start_ms is None:
            return aggs[max(0, hi - limit) : hi]
        lo = bisect.bisect_left(aggs, start_ms, key=_trade_ts)
        return aggs[lo : min(hi, lo + limit)]


def _trade_ts(trade: Trade) -> int:
    return trade.trade_ts


def trade_payload(trade: Trade, in_micros: bool = False) -> dict[str, Any]:
    """The WebSocket payload of a trade or aggTrade (web-socket-streams.md "Trade Streams")."""
    trade_ts = micros(trade.trade_ts) if in_micros else trade.trade_ts
    event_ts = micros(trade.event_ts) if in_micros else trade.event_ts
    if trade.channel == TRADE:
        return {
            "e": "trade",
            "E": event_ts,
            "s": trade.symbol,
            "t": trade.trade_id,
            "p": trade.price_text,
            "q": trade.quantity_text,
            "T": trade_ts,
            "m": trade.is_buyer_maker,
            "M": True,
        }
    return {
        "e": "aggTrade",
        "E": event_ts,
        "s": trade.symbol,
        "a": trade.trade_id,
        "p": trade.price_text,
        "q": trade.quantity_text,
        "f": trade.first_trade_id,
        "l": trade.last_trade_id,
        "T": trade_ts,
        "m": trade.is_buyer_maker,
        "M": True,
    }


def replay_orders(
    path: str | Path, symbol: str, limit: int = _REPLAY_LIMIT
) -> list[list[tuple[int, int, bool]]]:
    """Taker orders (fills with the same trade time and maker flag) of `symbol` from a recording.

    The file holds gzipped lines `<ns> <combined JSON>` (hftbacktest format); only prices, quantities
    and maker flags are taken, ids and times are the fake's own.
    """
    stream = f'"stream":"{symbol.lower()}@trade"'
    orders: list[list[tuple[int, int, bool]]] = []
    last_key: tuple[int, bool] | None = None
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if stream not in line:
                continue
            data = orjson.loads(line.split(" ", 1)[1])["data"]
            fill = (int(Decimal(data["p"]) * SCALE), int(Decimal(data["q"]) * SCALE), bool(data["m"]))
            key = (data["T"], fill[2])
            if key == last_key:
                orders[-1].append(fill)
            else:
                orders.append([fill])
                last_key = key
            if len(orders) >= limit:
                break
    if not orders:
        raise ValueError(f"no {symbol} trades in {path}")
    logger.info("replaying %d %s orders from %s", len(orders), symbol, path)
    return orders


def _cycle(orders: list[list[tuple[int, int, bool]]]) -> Iterator[list[tuple[int, int, bool]]]:
    while True:
        yield from orders
