"""The fake exchange's REST API (HTTP/1.1 keep-alive with h11 on asyncio streams) and its control endpoint.

Spec: rest-api.md, "LIMITS", "Exchange information", "Recent trades list", "Old trade lookup",
"Compressed/Aggregate trades list"; errors.md for the codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import h11
import orjson

from streams.binance.protocol import AGG_TRADE, TRADE, Trade
from streams.fake.faults import HTML_CONTENT_TYPE, HTML_ERROR_PAGE
from streams.fake.market import SymbolSpec, decimal_text, micros, quote_quantity
from streams.fake.state import Venue

logger = logging.getLogger(__name__)

_SYMBOL_RE: Final = re.compile(r"[A-Z0-9\-_.]{1,20}")
_SYMBOL_RANGE: Final = "^[A-Z0-9-_.]{1,20}$"
_SYMBOLS_RANGE: Final = '^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$'
_STATUS_FILTERS: Final = ("TRADING", "HALT", "BREAK")  # exchangeInfo's symbolStatus: "Valid values"
_MAX_LIMIT: Final = 1000
_HOUR_MS: Final = 3_600_000
_ROUTES: Final = {  # path: weight ("Weight:" of each endpoint)
    "/api/v3/exchangeInfo": 20,
    "/api/v3/trades": 25,
    "/api/v3/historicalTrades": 25,
    "/api/v3/aggTrades": 4,
}

JSON_CONTENT_TYPE: Final = "application/json;charset=UTF-8"


@dataclass(frozen=True, slots=True)
class RawBody:
    """A body sent as it is, not as JSON: what something other than the exchange answers."""

    data: bytes
    content_type: str
    trickle: float = 0.0  # seconds between two bytes (the archive's `trickle` fault); 0: at once


Reply = tuple[int, Any, dict[str, str]]  # status, JSON body (or a RawBody), extra headers


class ApiError(Exception):
    """A 400 with the exchange's error code and message."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


@dataclass
class WeightLimiter:
    """REQUEST_WEIGHT per fixed window per IP; 429 when over, 418 for asking again while told to wait."""

    limit: int
    window: float
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.ban_duration = 2 * self.window  # "IP bans ... scale in duration ... from 2 minutes"
        self._window_id = -1
        self._used: dict[str, int] = {}
        self._wait_until: dict[str, float] = {}
        self._ban_until: dict[str, float] = {}

    def used(self, ip: str) -> int:
        self._roll()
        return self._used.get(ip, 0)

    def _roll(self) -> int:
        window_id = int(self.clock() // self.window)
        if window_id != self._window_id:
            self._window_id, self._used = window_id, {}
        return window_id

    def admit(self, ip: str, weight: int) -> tuple[int, int]:
        """(0, 0) when admitted, else (status 429 or 418, Retry-After seconds)."""
        window_id, now = self._roll(), self.clock()
        if now < self._ban_until.get(ip, 0.0):
            return 418, math.ceil(self._ban_until[ip] - now)
        if now < self._wait_until.get(ip, 0.0):
            self._ban_until[ip] = now + self.ban_duration
            return 418, math.ceil(self.ban_duration)
        used = self._used.get(ip, 0)
        if used + weight > self.limit:
            self._wait_until[ip] = (window_id + 1) * self.window
            return 429, max(1, math.ceil(self._wait_until[ip] - now))
        self._used[ip] = used + weight
        return 0, 0


def trade_row(trade: Trade, in_micros: bool) -> dict[str, Any]:
    return {
        "id": trade.trade_id,
        "price": trade.price_text,
        "qty": trade.quantity_text,
        "quoteQty": quote_quantity(trade),
        "time": micros(trade.trade_ts) if in_micros else trade.trade_ts,
        "isBuyerMaker": trade.is_buyer_maker,
        "isBestMatch": True,
    }


def agg_row(trade: Trade, in_micros: bool) -> dict[str, Any]:
    return {
        "a": trade.trade_id,
        "p": trade.price_text,
        "q": trade.quantity_text,
        "f": trade.first_trade_id,
        "l": trade.last_trade_id,
        "T": micros(trade.trade_ts) if in_micros else trade.trade_ts,
        "m": trade.is_buyer_maker,
        "M": True,
    }


def _integer(params: dict[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise ApiError(
            -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
        )
    return int(value)


def _limit(params: dict[str, str]) -> int:
    limit = _integer(params, "limit")
    if limit is None:
        return 500
    if not 1 <= limit <= _MAX_LIMIT:
        raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
    return limit


class RestServer:
    """Answers the market-data endpoints from the exchange's record, within the weight limits."""

    def __init__(
        self, exchange: Venue, host: str, port: int, weight_limit: int, weight_window: float
    ) -> None:
        self.exchange, self.host, self.port = exchange, host, port
        self.limiter = WeightLimiter(weight_limit, weight_window)
        self.forced_429 = 0  # the rest_429 fault
        self.forced_garbage = 0  # the rest_garbage fault
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        conn = h11.Connection(h11.SERVER)
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        request: h11.Request | None = None
        body = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Request):
                    request, body = event, bytearray()
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    status, payload, headers = self.respond(request, bytes(body), peer)
                    await self._send(conn, writer, status, payload, headers)
                    if conn.our_state is h11.MUST_CLOSE:
                        break
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    break
        except h11.RemoteProtocolError as exc:
            logger.info("fake rest %s: bad HTTP (%s)", peer, exc)
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(ConnectionError, h11.LocalProtocolError):
                    await self._send(conn, writer, 400, {"code": -1, "msg": "Bad HTTP request."}, {})
        except ConnectionError as exc:
            logger.debug("fake rest %s: connection lost (%s)", peer, exc)
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        headers: dict[str, str],
    ) -> None:
        """Send a response: `payload` as JSON, or a RawBody's bytes under its own content type."""
        if isinstance(payload, RawBody):
            data, content_type = payload.data, payload.content_type
        else:
            data, content_type = orjson.dumps(payload), JSON_CONTENT_TYPE
        head = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(data))),
            *headers.items(),
        ]
        writer.write(conn.send(h11.Response(status_code=status, headers=head)))
        if isinstance(payload, RawBody) and payload.trickle > 0:
            for index in range(len(data)):
                writer.write(conn.send(h11.Data(data=data[index:index + 1])))
                await writer.drain()
                await asyncio.sleep(payload.trickle)
        else:
            writer.write(conn.send(h11.Data(data=data)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    def respond(self, request: h11.Request, body: bytes, peer: str) -> Reply:  # noqa: PLR0911 - a router
        url = urlsplit(request.target.decode("ascii", "replace"))
        stats = self.exchange.stats
        stats.rest_requests[url.path] += 1
        if url.path.startswith("/fake/"):
            return self._control(request.method.decode(), url.path, url.query, body)
        if url.path.startswith("/data/"):  # data.binance.vision's archive: another service, no weight
            status, data, content_type = self.exchange.archive.respond(request.method.decode(), url.path)
            return status, RawBody(data, content_type, self.exchange.archive.trickle_of(url.path)), {}
        if self.forced_garbage and url.path in _ROUTES:
            # A proxy in front answers for the exchange, before it (no weight used), whatever its state.
            self.forced_garbage -= 1
            stats.rest_garbage += 1
            return 200, RawBody(HTML_ERROR_PAGE, HTML_CONTENT_TYPE), {}
        if self.exchange.is_down():
            stats.rest_503 += 1
            return (
                503,
                {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."},
                {},
            )
        weight = _ROUTES.get(url.path)
        if weight is None:
            return 404, {"code": -1, "msg": "Not found."}, {}
        if self.forced_429:
            self.forced_429 -= 1
            return self._limited(429, 1, peer)
        status, retry_after = self.limiter.admit(peer, weight)
        if status:
            return self._limited(status, retry_after, peer)
        headers = {"X-MBX-USED-WEIGHT-1M": str(self.limiter.used(peer))}
        if request.method != b"GET":
            return 405, {"code": -1, "msg": "Method not allowed."}, headers
        in_micros = any(
            k.lower() == b"x-mbx-time-unit" and v.lower() == b"microsecond" for k, v in request.headers
        )
        try:
            return 200, self._endpoint(url.path, self._params(url.query), in_micros), headers
        except ApiError as exc:
            return exc.status, {"code": exc.code, "msg": exc.msg}, headers

    def _limited(self, status: int, retry_after: int, peer: str) -> Reply:
        stats = self.exchange.stats
        if status == 418:
            stats.rest_418 += 1
            msg = (
                "Way too much request weight used; IP banned. Please use WebSocket Streams for live updates."
            )
        else:
            stats.rest_429 += 1
            msg = (
                f"Too much request weight used; current limit is {self.limiter.limit} request weight per "
                f"{self.limiter.window:g} seconds. Please use WebSocket Streams for live updates."
            )
        headers = {"Retry-After": str(retry_after), "X-MBX-USED-WEIGHT-1M": str(self.limiter.used(peer))}
        return status, {"code": -1003, "msg": msg}, headers

    @staticmethod
    def _params(query: str) -> dict[str, str]:
        pairs = parse_qsl(query, keep_blank_values=True)
        params = dict(pairs)
        if len(params) != len(pairs):
            raise ApiError(-1101, "Duplicate values for a parameter detected.")
        return params

    def _symbol(self, params: dict[str, str]) -> str:
        symbol = params.get("symbol")
        if not symbol:
            raise ApiError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        if not _SYMBOL_RE.fullmatch(symbol):
            raise ApiError(
                -1100, f"Illegal characters found in parameter 'symbol'; legal range is '{_SYMBOL_RANGE}'."
            )
        if symbol not in self.exchange.markets:
            raise ApiError(-1121, "Invalid symbol.")
        return symbol

    def _endpoint(self, path: str, params: dict[str, str], in_micros: bool) -> Any:
        if path == "/api/v3/exchangeInfo":
            return self._exchange_info(params)
        market = self.exchange.markets[self._symbol(params)]
        limit = _limit(params)
        if path == "/api/v3/trades":
            return [trade_row(t, in_micros) for t in market.trades_from(None, limit)]
        if path == "/api/v3/historicalTrades":
            return [trade_row(t, in_micros) for t in market.trades_from(_integer(params, "fromId"), limit)]
        from_id, start, end = (_integer(params, k) for k in ("fromId", "startTime", "endTime"))
        if from_id is not None and (start is not None or end is not None):
            raise ApiError(-1128, "Combination of optional parameters invalid.")
        if start is not None and end is not None and not 0 <= end - start <= _HOUR_MS:
            raise ApiError(-1127, "More than 1 hours between startTime and endTime.")
        if from_id is not None:
            rows = market.aggs_from(from_id, limit)
        else:
            # "Timestamp parameters ... can be passed in milliseconds or microseconds."
            start, end = (None if v is None else v // 1000 if v >= 10**14 else v for v in (start, end))
            rows = market.aggs_between(start, end, limit)
        return [agg_row(t, in_micros) for t in rows]

    def _exchange_info(self, params: dict[str, str]) -> dict[str, Any]:
        markets, statuses = self.exchange.markets, self.exchange.statuses
        if "symbol" in params and "symbols" in params:
            raise ApiError(-1128, "Combination of optional parameters invalid.")
        wanted_status = params.get("symbolStatus")
        if wanted_status is not None:
            # "Cannot be used in combination with symbols or symbol."
            if "symbol" in params or "symbols" in params:
                raise ApiError(-1128, "Combination of optional parameters invalid.")
            if wanted_status not in _STATUS_FILTERS:
                raise ApiError(-1122, "Invalid symbolStatus.")
        wanted: list[str] = list(markets)
        if "symbol" in params:
            wanted = [self._symbol(params)]
        elif "symbols" in params:
            try:
                wanted = orjson.loads(params["symbols"])
            except orjson.JSONDecodeError:
                wanted = []
            if (
                not wanted
                or not isinstance(wanted, list)
                or not all(isinstance(s, str) and _SYMBOL_RE.fullmatch(s) for s in wanted)
            ):
                raise ApiError(
                    -1100,
                    f"Illegal characters found in parameter 'symbols'; legal range is '{_SYMBOLS_RANGE}'.",
                )
            if any(s not in markets for s in wanted):
                raise ApiError(-1121, "Invalid symbol.")
        window = self.limiter.window
        interval, number = (
            ("MINUTE", int(window // 60)) if window % 60 == 0 else ("SECOND", math.ceil(window))
        )
        return {
            "timezone": "UTC",
            "serverTime": int(time.time() * 1000),
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": interval,
                    "intervalNum": number,
                    "limit": self.limiter.limit,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": [
                _symbol_info(markets[s].spec, statuses[s])
                for s in wanted
                if wanted_status in (None, statuses[s])
            ],
        }

    def _control(self, method: str, path: str, query: str, body: bytes) -> Reply:  # noqa: PLR0911 - a router
        """`/fake/faults`, `/fake/archive` and `/fake/status` (POST), `/fake/record` and `/fake/stats` (GET):
        not part of Binance's API."""
        ex = self.exchange
        try:
            if method == "POST" and path == "/fake/faults":
                spec = orjson.loads(body or b"{}")
                if not isinstance(spec, dict) or "kind" not in spec:
                    raise ValueError("expected a JSON object with a 'kind'")
                return 200, {"affected": ex.inject(**spec)}, {}
            if method == "POST" and path == "/fake/archive":
                spec = orjson.loads(body or b"{}")
                if not isinstance(spec, dict):
                    raise ValueError("expected a JSON object with an 'action'")
                return 200, ex.archive.control(spec), {}
            if method == "POST" and path == "/fake/status":
                spec = orjson.loads(body or b"{}")
                if not isinstance(spec, dict) or not {"symbol", "status"} <= spec.keys():
                    raise ValueError('expected a JSON object like {"symbol": "BTCUSDT", "status": "BREAK"}')
                ex.set_status(str(spec["symbol"]).upper(), str(spec["status"]))
                return 200, {"symbol": str(spec["symbol"]).upper(), "status": str(spec["status"])}, {}
            params = dict(parse_qsl(query))
            if method == "GET" and path == "/fake/record":
                symbol, channel = params.get("symbol", "").upper(), params.get("channel", TRADE)
                if symbol not in ex.markets or channel not in (TRADE, AGG_TRADE):
                    raise ValueError(f"unknown symbol {symbol!r} or channel {channel!r}")
                record = ex.record(symbol) if channel == TRADE else ex.agg_record(symbol)
                return 200, [t._asdict() for t in record], {}
            if method == "GET" and path == "/fake/stats":
                return 200, ex.stats.as_dict(), {}
        except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            return 400, {"error": str(exc)}, {}
        return 404, {"error": f"no control endpoint {method} {path}"}, {}


def _symbol_info(spec: SymbolSpec, status: str) -> dict[str, Any]:
    return {
        "symbol": spec.symbol,
        "status": status,
        "baseAsset": spec.base_asset,
        "baseAssetPrecision": 8,
        "quoteAsset": spec.quote_asset,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": [
            "LIMIT",
            "LIMIT_MAKER",
            "MARKET",
            "STOP_LOSS",
            "STOP_LOSS_LIMIT",
            "TAKE_PROFIT",
            "TAKE_PROFIT_LIMIT",
        ],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": True,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": decimal_text(spec.tick_size),
                "maxPrice": "1000000.00000000",
                "tickSize": decimal_text(spec.tick_size),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": decimal_text(spec.step_size),
                "maxQty": "9000.00000000",
                "stepSize": decimal_text(spec.step_size),
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT", "MARGIN"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }
