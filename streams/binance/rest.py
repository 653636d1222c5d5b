"""The REST calls the collector needs: symbol validation and trade backfill, within the weight limit.

Spec: rest-api.md, "LIMITS" (X-MBX-USED-WEIGHT-1M, 429 with Retry-After, 418 ban), "Exchange
information" (weight 20), "Old trade lookup" (historicalTrades, weight 25), "Compressed/Aggregate
trades list" (aggTrades, weight 4).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson

from streams.binance.backoff import RETRY, Policy
from streams.binance.errors import (
    ExchangeUnavailable,
    IpBanned,
    ParseError,
    RateLimited,
    RestError,
    UnknownSymbol,
    retry_delay,
)
from streams.binance.protocol import AGG_TRADE, TRADE, Trade, normalize_symbol, trade_from_rest
from streams.binance.sequence import Gap

logger = logging.getLogger(__name__)

PAGE_LIMIT = 1000  # the most rows historicalTrades and aggTrades return per call
_WEIGHTS = {"/api/v3/exchangeInfo": 20, "/api/v3/historicalTrades": 25, "/api/v3/trades": 25,
            "/api/v3/aggTrades": 4}
_TRADES_PATH = {TRADE: "/api/v3/historicalTrades", AGG_TRADE: "/api/v3/aggTrades"}

Sleep = Callable[[float], Awaitable[None]]


class WeightBudget(Protocol):
    """Request weight shared by every client on one IP (the exchange counts per IP: 6,000 a minute).
    `take` waits until `weight` fits the current window's budget and counts it; `note` is what the
    exchange says is used already (X-MBX-USED-WEIGHT-1M), which includes other clients on the IP."""

    async def take(self, weight: int) -> float: ...

    async def note(self, used: int) -> None: ...


@dataclass
class RestStats:
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    used_weight: int = 0
    waited_for_weight: float = 0.0


class BinanceRest:
    """An async client for the public market-data endpoints, sharing one HTTP/1.1 keep-alive pool.

    Before each call it checks the weight it has seen used this minute (the exchange's
    X-MBX-USED-WEIGHT-1M) against `weight_limit * weight_budget` and waits for the next minute if the
    call would go over; a 429 or 418 is waited out for its Retry-After (up to `max_wait`); 5xx and
    network errors are retried on the `retry` policy (RETRY["rest request"] by default).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        weight_limit: int = 6000,
        weight_budget: float = 0.8,
        max_wait: float = 120.0,
        retry: Policy = RETRY["rest request"],
        micros: bool = False,
        budget: WeightBudget | None = None,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # X-MBX-TIME-UNIT: MICROSECOND makes REST times match the streams' (and the archive's) microseconds.
        headers = {"X-MBX-TIME-UNIT": "MICROSECOND"} if micros else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=headers)
        self._weight_cap = int(weight_limit * weight_budget)
        self._max_wait = max_wait
        self._retry = retry
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._weight_minute = -1
        self._budget = budget  # shared across processes (workers.budget); None: this client's own count
        self.stats = RestStats()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> BinanceRest:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- endpoints --------------------------------------------------------------------------------

    async def symbol_info(self, symbol: str) -> dict[str, Any]:
        """The exchangeInfo entry of a symbol; UnknownSymbol if the exchange does not list it or it
        does not trade."""
        symbol = normalize_symbol(symbol)
        try:
            body = await self._get("/api/v3/exchangeInfo", {"symbol": symbol})
        except RestError as exc:
            if exc.code == -1121:
                raise UnknownSymbol(symbol) from None
            raise
        for entry in body.get("symbols", ()):
            if entry.get("symbol") == symbol:
                if entry.get("status") != "TRADING":
                    raise UnknownSymbol(symbol, f"not trading (status {entry.get('status')})")
                return dict(entry)
        raise UnknownSymbol(symbol)

    async def validate_symbol(self, symbol: str, *, wait: float = 0.0) -> dict[str, Any]:
        """symbol_info, trying for `wait` seconds while the exchange cannot be reached (a starting demo)."""
        deadline = time.monotonic() + wait
        backoff = RETRY["exchange reachable"].backoff()
        while True:
            try:
                return await self.symbol_info(symbol)
            except ExchangeUnavailable:
                if time.monotonic() >= deadline:
                    raise
                await self._sleep(min(backoff.next_delay(), max(0.0, deadline - time.monotonic())))

    async def trades_page(self, symbol: str, channel: str, from_id: int | None, limit: int = PAGE_LIMIT
                          ) -> list[Trade]:
        """Up to `limit` trades from `from_id` inclusive (the most recent ones when from_id is None)."""
        params: dict[str, Any] = {"symbol": symbol, "limit": min(limit, PAGE_LIMIT)}
        if from_id is not None:
            params["fromId"] = from_id
        rows = await self._get(_TRADES_PATH[channel], params)
        if not isinstance(rows, list):
            raise ParseError(f"{_TRADES_PATH[channel]} answered a {type(rows).__name__}, not a list")
        return [trade_from_rest(symbol, channel, row) for row in rows]

    async def latest_trade_id(self, symbol: str, channel: str) -> int | None:
        """The newest trade id (channel trade) or aggregate id (aggTrade), from the newest aggregate trade:
        aggTrades weighs 4 where historicalTrades weighs 25 (1,500 streams resuming at once)."""
        rows = await self._get("/api/v3/aggTrades", {"symbol": symbol, "limit": 1})
        if not isinstance(rows, list):
            raise ParseError(f"/api/v3/aggTrades answered a {type(rows).__name__}, not a list")
        if not rows:
            return None
        newest = trade_from_rest(symbol, AGG_TRADE, rows[-1])
        return newest.last_trade_id if channel == TRADE else newest.trade_id

    async def pages(self, symbol: str, channel: str, gap: Gap) -> AsyncIterator[list[Trade]]:
        """The trades of `gap`, page by page, in id order; stops early if the exchange has no more."""
        next_id = gap.first
        while next_id <= gap.last:
            page = await self.trades_page(symbol, channel, next_id, gap.last - next_id + 1)
            page = [trade for trade in page if next_id <= trade.trade_id <= gap.last]
            if not page:
                return
            yield page
            next_id = page[-1].trade_id + 1

    # --- transport --------------------------------------------------------------------------------

    async def _get(self, path: str, params: dict[str, Any]) -> Any:
        backoff = self._retry.backoff()
        while True:
            try:
                await self._wait_for_weight(_WEIGHTS.get(path, 1))
                return await self._get_once(path, params)
            except (RestError, httpx.TransportError) as exc:
                error = _as_rest_error(exc, self.base_url)
                delay = retry_delay(error, backoff, max_wait=self._max_wait)
                if delay is None:
                    raise error from exc
                self.stats.retries += 1
                logger.warning("%s: GET %s failed (%s); retry %d in %.1f s", params.get("symbol", "-"), path, error,
                               backoff.attempt, delay)
                await self._sleep(delay)

    async def _get_once(self, path: str, params: dict[str, Any]) -> Any:
        self.stats.requests += 1
        response = await self._http.get(path, params=params)
        self._note_weight(response)
        if self._budget is not None and self.stats.used_weight:
            await self._budget.note(self.stats.used_weight)
        if response.status_code == 200:
            try:
                return orjson.loads(response.content)
            except orjson.JSONDecodeError:
                # A proxy's or CDN's error page with status 200: the API's state is unknown, like a 5xx.
                # Retried on the same schedule; never allowed to escape as a ValueError.
                raise ExchangeUnavailable(200, f"answered 200 with a body that is not JSON "
                                               f"({response.headers.get('content-type', 'no content type')}): "
                                               f"{response.text[:120]}") from None
        raise _error_from(response)

    def _note_weight(self, response: httpx.Response) -> None:
        used = response.headers.get("x-mbx-used-weight-1m")
        if used is not None and used.isdigit():
            self.stats.used_weight = int(used)
            self._weight_minute = int(self._wall_clock() // 60)

    async def _wait_for_weight(self, weight: int) -> None:
        """Wait for the next minute when this call would take the used weight over our budget."""
        if self._budget is not None:
            self.stats.waited_for_weight += await self._budget.take(weight)
            return
        now = self._wall_clock()
        if int(now // 60) != self._weight_minute:
            return  # a new minute: the exchange's counter has reset
        if self.stats.used_weight + weight <= self._weight_cap:
            return
        delay = 60.0 - now % 60 + 0.5
        logger.info("REST weight %d of budget %d used; waiting %.1f s", self.stats.used_weight,
                    self._weight_cap, delay)
        self.stats.waited_for_weight += delay
        await self._sleep(delay)


def _as_rest_error(exc: Exception, base_url: str) -> RestError:
    if isinstance(exc, RestError):
        return exc
    return ExchangeUnavailable(0, f"cannot reach {base_url}: {type(exc).__name__}: {exc}")


def _error_from(response: httpx.Response) -> RestError:
    status = response.status_code
    code, message = None, response.text[:200]
    try:
        body = orjson.loads(response.content)
        if isinstance(body, dict):
            code, message = body.get("code"), str(body.get("msg", message))
    except orjson.JSONDecodeError:
        pass  # not every error (a proxy's 502, say) has a JSON body; the text is the message
    if status in (418, 429):
        retry_after = _retry_after(response)
        return (IpBanned if status == 418 else RateLimited)(status, message, retry_after)
    if status >= 500:
        return ExchangeUnavailable(status, message)
    return RestError(status, message, code if isinstance(code, int) else None)


def _retry_after(response: httpx.Response) -> float:
    raw = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(raw))
    except ValueError:
        return 1.0
