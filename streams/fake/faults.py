"""Faults the fake exchange can inject: their parameters, random rates, and the garbage frames it sends."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, Final

import orjson

logger = logging.getLogger(__name__)

# Faults that act on connections (chosen by symbol) and faults that act on the whole exchange.
CONNECTION_FAULTS: Final = ("drop", "close", "stall", "garbage", "shutdown")
EXCHANGE_FAULTS: Final = ("down", "up", "rest_429")
FAULT_KINDS: Final = CONNECTION_FAULTS + EXCHANGE_FAULTS
GARBAGE_VARIANTS: Final = ("text", "missing", "types", "event", "binary", "oversized", "array")
OVERSIZED_BYTES: Final = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Random faults per connection per second (each an independent Poisson rate, from a seeded RNG)."""

    drop: float = 0.0
    close: float = 0.0
    stall: float = 0.0
    garbage: float = 0.0
    shutdown: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"fault rate {f.name}={value!r} must be a number >= 0")

    def items(self) -> list[tuple[str, float]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) > 0]


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault to inject; which parameters matter depends on `kind`."""

    kind: str
    symbol: str | None = None
    code: int = 1000  # close
    reason: str = ""  # close
    duration: float | None = None  # stall (None: forever), down (None: until "up")
    variant: str | None = None  # garbage (None: each in turn)
    count: int = 1  # rest_429
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


def garbage_frame(variant: str, symbol: str, stream: str | None, event_ts: int) -> tuple[bool, bytes]:
    """(is_text, payload) of a malformed frame that never carries a real trade id.

    JSON garbage on a combined connection is wrapped like a real event, so a client's parser gets past
    the envelope and meets the bad payload itself.
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
    else:
        raise ValueError(f"unknown garbage variant {variant!r}")
    if stream is not None:
        data = {"stream": stream, "data": data}
    return True, orjson.dumps(data)
