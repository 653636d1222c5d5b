"""What the exchange lists (exchangeInfo): the trading symbols to enable, and enabled symbols that stopped trading.

Spec: rest-api.md "Exchange information": weight 20 with or without parameters; `symbols` is a JSON array, and
one symbol it does not list fails the whole call with -1121 ("Invalid symbol.") without saying which; enums.md
"Symbol status": TRADING, END_OF_DAY, HALT, BREAK, CANCEL_ONLY. Only TRADING symbols make trades.

A symbol that stops trading keeps its streams enabled: a BREAK or a HALT ends, and the stream, still
subscribed, carries the first trades after it with no gap and no one having to enable it again. It is
reported instead: `check_trading` (every few minutes, one call for all enabled symbols) marks it in Redis, logs
once when its status changes, and `streams list|status`, the admin and `not_trading()` show it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from asgiref.sync import async_to_sync
from redis.typing import EncodableT

from streams.binance.backoff import RETRY
from streams.binance.errors import InvalidStreamName, ParseError, RestError
from streams.binance.protocol import normalize_symbol
from streams.binance.rest import BinanceRest
from workers.budget import shared_rest
from workers.keys import PREFIX
from workers.redis import sync_redis, text

logger = logging.getLogger(__name__)

TRADING = "TRADING"
NOT_LISTED = "NOT_LISTED"  # ours, not the exchange's: exchangeInfo no longer lists the symbol
NOT_TRADING = f"{PREFIX}:not-trading"  # hash: SYMBOL -> its status, for enabled symbols that do not trade
CHECKED_AT = f"{PREFIX}:listing-checked-at"  # when check_trading last had the exchange's answer (Unix time)
# Up to this many symbols are named in `symbols=[...]`; more take the whole listing (the same weight, no URL of
# 20 KB). So do named symbols of which one is not listed: the whole listing says which.
NAMED_AT_MOST = 100
TIMEOUT = 10.0  # s per request; the whole listing is a few MB on the real exchange


@dataclass(frozen=True, slots=True)
class Listed:
    """A symbol as exchangeInfo lists it."""

    symbol: str
    status: str
    quote: str

    @property
    def trading(self) -> bool:
        return self.status == TRADING


class _ExchangeInfo(BinanceRest):
    """BinanceRest with exchangeInfo's other parameters (`symbols`, or none: every symbol), through the same
    weight accounting and the one retry decision."""

    async def exchange_info(self, params: dict[str, Any]) -> Any:
        return await self._get("/api/v3/exchangeInfo", {"showPermissionSets": "false", **params})


def listing(symbols: Collection[str] | None = None) -> dict[str, Listed]:
    """Every symbol the exchange lists, or those of `symbols` that it lists (the others are left out), from one
    exchangeInfo call (two when a named symbol is not listed). RestError when the exchange cannot answer."""
    wanted = sorted({normalize_symbol(s) for s in symbols}) if symbols is not None else None
    listed = async_to_sync(_fetch)(wanted)
    return listed if wanted is None else {s: listed[s] for s in wanted if s in listed}


async def _fetch(symbols: list[str] | None) -> dict[str, Listed]:
    async with shared_rest(_ExchangeInfo, timeout=TIMEOUT, retry=RETRY["symbol check"], max_wait=TIMEOUT) as rest:
        body = None
        if symbols and len(symbols) <= NAMED_AT_MOST:
            try:
                body = await rest.exchange_info({"symbols": orjson.dumps(symbols).decode()})
            except RestError as exc:
                if exc.code != -1121:
                    raise
        if body is None:
            body = await rest.exchange_info({})
    return _parse(body)


def _parse(body: Any) -> dict[str, Listed]:
    entries = body.get("symbols") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ParseError(f"exchangeInfo answered without a list of symbols: {str(body)[:120]}")
    listed = {}
    for entry in entries:
        try:
            symbol = str(entry["symbol"])
            listed[symbol] = Listed(symbol, str(entry["status"]), str(entry.get("quoteAsset", "")))
        except (KeyError, TypeError):
            logger.warning("exchangeInfo lists a symbol without a name or status: %s", str(entry)[:200])
    return listed


@dataclass
class Selection:
    """Symbols chosen from the listing: those that trade, those left out because they do not, and names the
    collector cannot take (its symbol rules refuse them: exchanges list names that are not ASCII)."""

    trading: list[str]
    not_trading: dict[str, str]  # symbol -> status
    unusable: dict[str, str] = field(default_factory=dict)  # listed name -> why it cannot be taken


def trading_symbols(quotes: Collection[str] | None = None) -> Selection:
    """Every listed symbol (of the `quotes` assets, if given), split by whether it trades: one call. A name
    that cannot be a stream is set aside with the reason: one odd name never stops the others."""
    wanted = {q.upper() for q in quotes} if quotes else None
    chosen, unusable = [], {}
    for entry in listing().values():
        if wanted is not None and entry.quote not in wanted:
            continue
        try:
            normalize_symbol(entry.symbol)
        except InvalidStreamName as exc:
            unusable[entry.symbol] = str(exc)
            continue
        chosen.append(entry)
    return Selection(sorted(e.symbol for e in chosen if e.trading),
                     {e.symbol: e.status for e in sorted(chosen, key=lambda e: e.symbol) if not e.trading},
                     dict(sorted(unusable.items())))


@dataclass
class Named:
    """What the exchange says of symbols named by a person."""

    trading: list[str]
    not_trading: dict[str, str]  # symbol -> status
    unknown: list[str]  # not listed at all


def check_named(symbols: Collection[str]) -> Named:
    """Each of `symbols` (InvalidStreamName if malformed) looked up in one exchangeInfo call."""
    wanted = sorted({normalize_symbol(s) for s in symbols})
    listed = listing(wanted)
    return Named([s for s in wanted if s in listed and listed[s].trading],
                 {s: listed[s].status for s in wanted if s in listed and not listed[s].trading},
                 [s for s in wanted if s not in listed])


# --- the periodic check ----------------------------------------------------------------------------------

def check_trading() -> dict[str, str]:
    """Ask the exchange (one call) about every symbol with an enabled stream; mark those that do not trade
    (with their status, NOT_LISTED when it lists them no more), log each change once, and return the marks."""
    from workers.registry import enabled_symbols

    symbols = enabled_symbols()
    listed = listing(symbols) if symbols else {}
    stopped = {s: listed[s].status if s in listed else NOT_LISTED for s in symbols
               if s not in listed or not listed[s].trading}
    note_not_trading(stopped, checked=symbols)
    return stopped


def note_not_trading(stopped: Mapping[str, str], checked: Collection[str],
                     client: redis.Redis | None = None) -> None:
    """Replace the marks with `stopped`; log each symbol whose status changed since the last check, once."""
    client = client or sync_redis()
    before = not_trading(client)
    for symbol, status in sorted(stopped.items()):
        if before.get(symbol) != status:
            logger.warning("%s: the exchange says %s, not TRADING; its streams stay enabled and carry its trades "
                           "again when it trades", symbol, status)
    for symbol in sorted(set(before) - set(stopped)):
        if symbol in checked:
            logger.info("%s: trading again", symbol)
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(NOT_TRADING)
        if stopped:
            fields: dict[EncodableT, EncodableT] = {symbol: status for symbol, status in stopped.items()}
            pipe.hset(NOT_TRADING, mapping=fields)
        pipe.set(CHECKED_AT, f"{time.time():.3f}")
        pipe.execute()


def not_trading(client: redis.Redis | None = None) -> dict[str, str]:
    """Enabled symbols that were not trading at the last check: symbol -> status."""
    raw = (client or sync_redis()).hgetall(NOT_TRADING)
    return {text(k): text(v) for k, v in raw.items()}
