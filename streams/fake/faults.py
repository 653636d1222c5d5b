"""Faults the fake exchange can inject: their parameters, random rates, and the garbage frames it sends."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, Final

import orjson

from streams.binance.protocol import AGG_TRADE, TRADE

logger = logging.getLogger(__name__)

# Faults that act on connections (chosen by symbol) and faults that act on the whole exchange.
CONNECTION_FAULTS: Final = ("drop", "close", "stall", "garbage", "shutdown", "replay")
EXCHANGE_FAULTS: Final = ("down", "up", "rest_429", "rest_garbage")
FAULT_KINDS: Final = CONNECTION_FAULTS + EXCHANGE_FAULTS
# `count` when not given: one REST answer (rest_429, rest_garbage), twenty trades again (replay).
DEFAULT_COUNTS: Final = {"replay": 20}

# Malformed frames: no parser may take them for a trade.
MALFORMED_VARIANTS: Final = ("text", "missing", "types", "event", "binary", "oversized", "array")
# Poison frames: well-formed trade events (envelope, every field, the right JSON types) with one value
# that storage cannot hold. Last in GARBAGE_VARIANTS, so the round-robin over variants begins with the
# malformed ones, as it did before these existed.
POISON_VARIANTS: Final = ("id_overflow", "price_overflow", "precision")
GARBAGE_VARIANTS: Final = MALFORMED_VARIANTS + POISON_VARIANTS
OVERSIZED_BYTES: Final = 2 * 1024 * 1024

# Storage keeps trade ids as 64-bit signed integers and prices and quantities as decimals of 28 digits with
# 8 decimals (streams/models.py), so: one past the largest id, 21 integer digits, a 9th decimal.
OVERFLOW_ID: Final = 2**63
OVERFLOW_PRICE: Final = "100000000000000000000.00000000"
PRECISE_QUANTITY: Final = "0.123456789"
# The poison frames whose id fits carry the market's next id plus this: a trillion trades ahead, an id
# that the record cannot reach, so a poison frame never shares an id with a real trade.
POISON_ID_OFFSET: Final = 10**12

# What a proxy or CDN in front of the exchange answers when its origin fails: HTML, whatever was asked.
HTML_ERROR_PAGE: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
HTML_CONTENT_TYPE: Final = "text/html"


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Random faults per second (each an independent Poisson rate, from a seeded RNG).

    Connection faults happen per connection per second; `rest_garbage` per second to the whole exchange
    (the REST side has no connections that last), each time to the next market-data answer.
    """

    drop: float = 0.0
    close: float = 0.0
    stall: float = 0.0
    garbage: float = 0.0
    shutdown: float = 0.0
    replay: float = 0.0
    rest_garbage: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"fault rate {f.name}={value!r} must be a number >= 0")

    def items(self) -> list[tuple[str, float]]:
        """Every fault with a rate above zero."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) > 0]

    def per_connection(self) -> list[tuple[str, float]]:
        return [(kind, rate) for kind, rate in self.items() if kind in CONNECTION_FAULTS]

    def per_exchange(self) -> list[tuple[str, float]]:
        return [(kind, rate) for kind, rate in self.items() if kind in EXCHANGE_FAULTS]


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault to inject; which parameters matter depends on `kind`."""

    kind: str
    symbol: str | None = None
    code: int = 1000  # close
    reason: str = ""  # close
    duration: float | None = None  # stall (None: forever), down (None: until "up")
    variant: str | None = None  # garbage (None: each in turn)
    count: int = 1  # rest_429, rest_garbage: answers; replay: trades per stream (fault_from: DEFAULT_COUNTS)
    grace: float = 1.0  # shutdown


def fault_from(kind: str, symbol: str | None = None, **params: Any) -> Fault:
    """A validated Fault, or ValueError naming the bad part."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
    allowed = {f.name for f in fields(Fault)} - {"kind", "symbol"}
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"unknown fault parameter(s) {', '.join(sorted(unknown))} for {kind!r}")
    if symbol is not None and (not isinstance(symbol, str) or not symbol.isalnum()):
        raise ValueError(f"invalid symbol {symbol!r}")
    params.setdefault("count", DEFAULT_COUNTS.get(kind, 1))
    fault = Fault(kind, symbol.upper() if symbol else None, **params)
    if not isinstance(fault.code, int) or not 1000 <= fault.code <= 4999 or fault.code in (1004, 1005, 1006):
        raise ValueError(f"close code {fault.code!r} must be 1000-4999 (not 1004-1006)")
    if fault.duration is not None and (not isinstance(fault.duration, int | float) or fault.duration < 0):
        raise ValueError(f"duration {fault.duration!r} must be a number of seconds >= 0 or None")
    if fault.variant is not None and fault.variant not in GARBAGE_VARIANTS:
        raise ValueError(f"unknown garbage variant {fault.variant!r}; expected one of {GARBAGE_VARIANTS}")
    if not isinstance(fault.count, int) or fault.count < 1:
        raise ValueError(f"count {fault.count!r} must be an integer >= 1")
    if not isinstance(fault.grace, int | float) or fault.grace < 0:
        raise ValueError(f"grace {fault.grace!r} must be a number of seconds >= 0")
    return fault


def garbage_frame(
    variant: str,
    symbol: str,
    stream: str | None,
    event_ts: int,
    *,
    channel: str = TRADE,
    next_id: int = 0,
    price: str = "1.00000000",
) -> tuple[bool, bytes]:
    """(is_text, payload) of a bad frame that never carries a real trade id.

    JSON garbage on a combined connection is wrapped like a real event, so a client's parser gets past
    the envelope and meets the bad payload itself. `event_ts` is in the connection's time unit; for poison
    frames, `channel` is the stream's, `next_id` the id the market gives next in it, `price` a plausible one.
    """
    if variant == "binary":
        return False, b"\x00\x01\x02 not a text frame \xff"
    if variant == "text":
        return True, b"<html>502 Bad Gateway</html>"
    if variant == "oversized":
        filler = "x" * OVERSIZED_BYTES
        return True, orjson.dumps({"e": "trade", "E": event_ts, "s": symbol, "pad": filler})
    data: Any
    if variant == "missing":
        data = {"e": "trade", "E": event_ts, "s": symbol}
    elif variant == "types":
        data = {
            "e": "trade",
            "E": event_ts,
            "s": symbol,
            "t": "abc",
            "p": 61837.63,
            "q": "0.1",
            "T": event_ts,
            "m": "yes",
            "M": True,
        }
    elif variant == "event":
        data = {"e": "fakeEvent", "E": event_ts, "s": symbol}
    elif variant == "array":
        data = [{"e": "trade", "E": event_ts, "s": symbol}]
    elif variant in POISON_VARIANTS:
        data = poison_event(variant, symbol, channel, event_ts=event_ts, next_id=next_id, price=price)
    else:
        raise ValueError(f"unknown garbage variant {variant!r}")
    if stream is not None:
        data = {"stream": stream, "data": data}
    return True, orjson.dumps(data)


def poison_event(
    variant: str, symbol: str, channel: str, *, event_ts: int, next_id: int, price: str
) -> dict[str, Any]:
    """A trade (or aggTrade) event right in form and types, with one value that storage cannot hold.

    Its id is `next_id` (the market's next id in that channel) + POISON_ID_OFFSET, or OVERFLOW_ID.
    """
    trade_id, quantity = next_id + POISON_ID_OFFSET, "0.00100000"
    storable_id = trade_id
    if variant == "id_overflow":
        trade_id = OVERFLOW_ID
    elif variant == "price_overflow":
        price = OVERFLOW_PRICE
    elif variant == "precision":
        quantity = PRECISE_QUANTITY
    else:
        raise ValueError(f"unknown poison variant {variant!r}")
    if channel == AGG_TRADE:  # first and last trade ids out of the record's reach too, but storable
        return {
            "e": "aggTrade",
            "E": event_ts,
            "s": symbol,
            "a": trade_id,
            "p": price,
            "q": quantity,
            "f": storable_id,
            "l": storable_id,
            "T": event_ts,
            "m": False,
            "M": True,
        }
    return {
        "e": "trade",
        "E": event_ts,
        "s": symbol,
        "t": trade_id,
        "p": price,
        "q": quantity,
        "T": event_ts,
        "m": False,
        "M": True,
    }
