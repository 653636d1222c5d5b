"""The Binance market-stream protocol without I/O: stream names and URLs, frames parsed into events.

Spec: binance-spot-api-docs, web-socket-streams.md ("General WSS information", "Live Subscribing",
"Trade Streams", "Aggregate Trade Streams", "Server Shutdown") and rest-api.md ("Old trade lookup",
"Compressed/Aggregate trades list").

Parsing has two paths with one meaning: msgspec decodes the common frame (a combined-stream trade or aggTrade)
straight into typed fields, and anything it does not take goes to the general path (orjson, then checks in
Python), which is also the reference the fast path is tested against.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Final, NamedTuple
from urllib.parse import quote

import msgspec
import orjson

from streams.binance.errors import InvalidStreamName, ParseError

TRADE: Final = "trade"
AGG_TRADE: Final = "aggTrade"
CHANNELS: Final = (TRADE, AGG_TRADE)

# Symbols are upper-case letters and digits on the exchange; stream names carry them lower case.
_SYMBOL_RE: Final = re.compile(r"[A-Za-z0-9]{2,20}")
# A frame of trades is ~200 bytes and a LIST_SUBSCRIPTIONS reply for 1024 streams ~30 KiB.
MAX_FRAME_BYTES: Final = 1 << 20
# Timestamps at or above this are microseconds (timeUnit=MICROSECOND); below, milliseconds.
_MICROSECOND_THRESHOLD: Final = 10**14
_MAX_TIMESTAMP: Final = 10**17
# What storage holds (nothing fails silently: a value a column cannot hold is a bad frame, never a stuck
# flush): ids are signed 64-bit, prices and quantities numeric(28,8), symbols varchar(20).
MAX_ID: Final = 2**63 - 1
DECIMAL_INTEGER_DIGITS: Final = 20
DECIMAL_PLACES: Final = 8
MAX_SYMBOL_LENGTH: Final = 20
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH: Final = datetime(1970, 1, 1)  # for iso_time: the text of the date and time of day


def datetime_from_exchange(timestamp: int) -> datetime:
    """A UTC datetime from an exchange timestamp in milliseconds or microseconds (told by magnitude)."""
    if timestamp >= _MICROSECOND_THRESHOLD:
        return _EPOCH + timedelta(microseconds=timestamp)
    return _EPOCH + timedelta(milliseconds=timestamp)


def iso_time(timestamp: int) -> str:
    """`datetime_from_exchange(timestamp).isoformat()` without making a datetime (which costs more than the
    rest of a JSON line): the date and time of day are made once per second (trades come many to a second)
    and a millisecond's text is looked up."""
    if timestamp < _MICROSECOND_THRESHOLD:
        return _second_text(timestamp // 1000) + _MILLISECOND_TEXT[timestamp % 1000]
    second, micros = divmod(timestamp, 1_000_000)
    if micros:
        return f"{_second_text(second)}.{micros:06d}+00:00"
    return f"{_second_text(second)}+00:00"


_MILLISECOND_TEXT: Final = ("+00:00", *(f".{millis:03d}000+00:00" for millis in range(1, 1000)))


@functools.lru_cache(maxsize=64)
def _second_text(second: int) -> str:
    return (_NAIVE_EPOCH + timedelta(seconds=second)).isoformat()


class Trade(NamedTuple):
    """One trade (channel `trade`) or aggregate trade (channel `aggTrade`), as the exchange reported it.

    Immutable. Prices and quantities are kept as the exchange's exact decimal text (validated as
    such) and times as its integers; `price`, `quantity` and the datetimes are computed when asked.
    Storage and broadcast want the text anyway, so parsing does no work a consumer may not need.
    `event_ts` equals `trade_ts` for trades that came from the REST API, which has no event time.
    """

    symbol: str
    channel: str
    trade_id: int
    price_text: str
    quantity_text: str
    trade_ts: int
    event_ts: int
    is_buyer_maker: bool
    first_trade_id: int | None = None
    last_trade_id: int | None = None
    received_us: int | None = None  # local receive time (µs since the epoch); None for REST and the archive

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_text)

    @property
    def quantity(self) -> Decimal:
        return Decimal(self.quantity_text)

    @property
    def trade_time(self) -> datetime:
        return datetime_from_exchange(self.trade_ts)

    @property
    def event_time(self) -> datetime:
        return datetime_from_exchange(self.event_ts)

    @property
    def stream(self) -> str:
        """Its stream's name, the text of its `streams.binance.streamid.StreamId`."""
        return stream_text(self.symbol, self.channel)

    def as_record(self) -> dict[str, Any]:
        """The seed's field names, with exact decimal strings and ISO 8601 UTC times."""
        return {
            "ticker_symbol": self.symbol,
            "price": self.price_text,
            "volume": self.quantity_text,
            "trade_id": self.trade_id,
            "trade_time": iso_time(self.trade_ts),
            "event_time": iso_time(self.event_ts),
            "is_market_maker": self.is_buyer_maker,
        }


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / ... request."""

    id: int | str | None
    result: Any = None
    error_code: int | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


@dataclass(frozen=True, slots=True)
class ServerShutdown:
    """The `serverShutdown` notice: the server is about to close; reconnect now."""

    event_ts: int


Event = Trade | Reply | ServerShutdown


# --- Stream names and URLs --------------------------------------------------------------------------


def normalize_symbol(symbol: str) -> str:
    """The exchange's upper-case symbol, or InvalidStreamName naming what is wrong."""
    if not isinstance(symbol, str) or not _SYMBOL_RE.fullmatch(symbol):
        raise InvalidStreamName(f"invalid symbol {symbol!r}: expected 2-20 letters or digits, like BTCUSDT")
    return symbol.upper()


def normalize_channel(channel: str) -> str:
    """`trade` or `aggTrade` (case-insensitive on input), or InvalidStreamName."""
    for known in CHANNELS:
        if isinstance(channel, str) and channel.lower() == known.lower():
            return known
    raise InvalidStreamName(f"invalid channel {channel!r}: expected one of {', '.join(CHANNELS)}")


def stream_name(symbol: str, channel: str) -> str:
    """`btcusdt@trade` from a symbol and a channel in any case (InvalidStreamName for a bad one)."""
    return stream_text(normalize_symbol(symbol), normalize_channel(channel))


def stream_text(symbol: str, channel: str) -> str:
    """`btcusdt@trade` from the exchange's symbol and channel: stream names are lower case (spec: "All
    symbols for streams are lowercase"). The one spelling of a stream's name."""
    return f"{symbol.lower()}@{channel}"


def split_stream_name(name: str) -> tuple[str, str]:
    """(SYMBOL, channel) from `btcusdt@trade`, or InvalidStreamName."""
    symbol, sep, channel = name.partition("@")
    if not sep or symbol != symbol.lower() or channel not in CHANNELS:
        raise InvalidStreamName(f"invalid stream name {name!r}: expected <lowercase symbol>@trade|aggTrade")
    return normalize_symbol(symbol), channel


def raw_stream_url(base_url: str, stream: str) -> str:
    """`<base>/ws/<stream>`: one stream, payloads unwrapped."""
    return f"{base_url.rstrip('/')}/ws/{quote(stream, safe='@')}"


def combined_stream_url(base_url: str, streams: Sequence[str]) -> str:
    """`<base>/stream?streams=a/b`: payloads wrapped as {"stream": .., "data": ..}."""
    if not streams:
        raise InvalidStreamName("a combined stream needs at least one stream name")
    if len(streams) > MAX_STREAMS_PER_CONNECTION:
        raise InvalidStreamName(
            f"{len(streams)} streams on one connection; the exchange allows {MAX_STREAMS_PER_CONNECTION}"
        )
    return f"{base_url.rstrip('/')}/stream?streams={'/'.join(streams)}"


MAX_STREAMS_PER_CONNECTION: Final = 1024


# --- Requests ---------------------------------------------------------------------------------------


def subscribe_request(streams: Iterable[str], request_id: int) -> bytes:
    return orjson.dumps({"method": "SUBSCRIBE", "params": list(streams), "id": request_id})


def unsubscribe_request(streams: Iterable[str], request_id: int) -> bytes:
    return orjson.dumps({"method": "UNSUBSCRIBE", "params": list(streams), "id": request_id})


def list_subscriptions_request(request_id: int) -> bytes:
    return orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": request_id})


# --- Parsing ---------------------------------------------------------------------------------------

_loads = orjson.loads
_PARSE_FAILURES = (KeyError, TypeError, ValueError, ArithmeticError, AttributeError)

# The fast path: a combined-stream trade or aggTrade decoded by msgspec into these types, which it checks in
# C while it decodes: every key known (an unknown one, a missing one or a duplicate tag falls back), exact
# JSON types (no float for an int, no 1 for true), ids and timestamps in range, lengths. Fields are declared
# in the order the exchange sends them, which msgspec decodes fastest.

_Id = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
_Timestamp = Annotated[int, msgspec.Meta(ge=0, lt=_MAX_TIMESTAMP)]
_Symbol = Annotated[str, msgspec.Meta(max_length=MAX_SYMBOL_LENGTH)]
# The exchange's decimals: at least a point and 8 places, at most 20 integer digits before them.
_Decimal = Annotated[str, msgspec.Meta(min_length=1 + DECIMAL_PLACES,
                                       max_length=DECIMAL_INTEGER_DIGITS + 1 + DECIMAL_PLACES)]


class _TradeData(msgspec.Struct, tag_field="e", tag=TRADE, forbid_unknown_fields=True, gc=False,
                 rename={"event_ts": "E", "symbol": "s", "trade_id": "t", "price": "p", "quantity": "q",
                         "trade_ts": "T", "is_buyer_maker": "m", "ignore": "M"}):
    event_ts: _Timestamp
    symbol: _Symbol
    trade_id: _Id
    price: _Decimal
    quantity: _Decimal
    trade_ts: _Timestamp
    is_buyer_maker: bool
    ignore: bool = True


class _AggTradeData(msgspec.Struct, tag_field="e", tag=AGG_TRADE, forbid_unknown_fields=True, gc=False,
                    rename={"event_ts": "E", "symbol": "s", "trade_id": "a", "price": "p", "quantity": "q",
                            "first_trade_id": "f", "last_trade_id": "l", "trade_ts": "T", "is_buyer_maker": "m",
                            "ignore": "M"}):
    event_ts: _Timestamp
    symbol: _Symbol
    trade_id: _Id  # the aggregate trade's id
    price: _Decimal
    quantity: _Decimal
    first_trade_id: _Id
    last_trade_id: _Id
    trade_ts: _Timestamp
    is_buyer_maker: bool
    ignore: bool = True


class _CombinedFrame(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    stream: str
    data: _TradeData | _AggTradeData


_decode_combined: Final = msgspec.json.Decoder(_CombinedFrame).decode
# Whatever msgspec refuses (DecodeError, and its ValidationError) goes to the general path, which says why;
# a str with lone surrogates cannot be UTF-8 encoded for msgspec, and orjson calls it "not JSON".
_FAST_PATH_MISSES: Final = (msgspec.DecodeError, UnicodeEncodeError)
# Trade(...) runs NamedTuple's __new__ in Python; tuple.__new__ builds the same tuple in C (measured: ~100 ns less).
_new: Final = tuple.__new__



def parse_frame(frame: str | bytes, received_us: int | None = None) -> Event:
    """Parse one WebSocket frame (raw or combined-wrapped) into an event; ParseError for anything else.
    `received_us`: when it arrived (µs since the epoch), kept on the trade."""
    if type(frame) is not str:
        raise ParseError("binary frame (the exchange sends text frames)", frame[:200])
    if len(frame) > MAX_FRAME_BYTES:
        raise ParseError(f"oversized frame of {len(frame)} characters", frame[:200])
    try:
        data = _decode_combined(frame).data
    except _FAST_PATH_MISSES:
        return parse_frame_general(frame, received_us)
    # What the types could not say, checked with the cheapest operations CPython has (each is a subset of
    # the general path's check, so a trade taken here is the one the general path makes): the symbol is
    # ASCII letters and digits; each decimal has its one point exactly 8 places from the end, as the
    # exchange writes them, and digits elsewhere (`replace` takes the first two points away: a third one
    # stays and fails `isdigit`). Lengths and number ranges were checked by msgspec.
    symbol, price, quantity = data.symbol, data.price, data.quantity
    if (
        price[-9] == "." and quantity[-9] == "." and symbol.isascii() and symbol.isalnum()
        and (digits := price + quantity).isascii() and digits.replace(".", "", 2).isdigit()
    ):
        if type(data) is _TradeData:
            return _new(Trade, (symbol.upper(), TRADE, data.trade_id, price, quantity, data.trade_ts,
                                data.event_ts, data.is_buyer_maker, None, None, received_us))
        if type(data) is _AggTradeData and data.first_trade_id <= data.last_trade_id:
            return _new(Trade, (symbol.upper(), AGG_TRADE, data.trade_id, price, quantity, data.trade_ts,
                                data.event_ts, data.is_buyer_maker, data.first_trade_id, data.last_trade_id,
                                received_us))
    return parse_frame_general(frame, received_us)


def parse_frame_general(frame: str, received_us: int | None = None) -> Event:
    """`parse_frame` without the msgspec path: orjson, then every check in Python, with the reason."""
    try:
        message = _loads(frame)
    except orjson.JSONDecodeError:
        raise ParseError("not JSON", frame[:200]) from None
    try:
        # A combined-stream trade without the general dispatch (as the parser always has).
        if type(message) is dict and type(data := message.get("data")) is dict and data.get("e") == TRADE:
            return _trade_from_ws(data, received_us)
        return parse_message(message, received_us)
    except _PARSE_FAILURES as exc:
        raise ParseError(f"bad trade event: {type(exc).__name__}: {exc}", frame[:200]) from None
    except ParseError as exc:
        exc.frame = frame[:200]
        raise


def parse_message(message: Any, received_us: int | None = None) -> Event:
    """Parse a decoded JSON message into an event; ParseError for anything else."""
    if type(message) is not dict:
        raise ParseError(f"expected a JSON object, got {type(message).__name__}")
    if "stream" in message:
        message = message.get("data")
        if type(message) is not dict:
            raise ParseError("combined-stream 'data' is not an object")
    kind = message.get("e")
    try:
        if kind == TRADE:
            return _trade_from_ws(message, received_us)
        if kind == AGG_TRADE:
            return _agg_trade_from_ws(message, received_us)
        if kind == "serverShutdown":
            return ServerShutdown(_timestamp(message["E"]))
    except _PARSE_FAILURES as exc:
        raise ParseError(f"bad {kind} event: {type(exc).__name__}: {exc}") from None
    if kind is None and "id" in message:
        return _reply(message)
    raise ParseError(f"unknown event type {kind!r}")


def _trade_from_ws(m: dict[str, Any], received_us: int | None) -> Trade:
    # The hot path: one chain of cheap checks, no helper calls; on failure the helpers say why.
    s, t, p, q, ts, es, mk = m["s"], m["t"], m["p"], m["q"], m["T"], m["E"], m["m"]
    if (
        type(t) is int and type(ts) is int and type(es) is int and type(mk) is bool
        and type(s) is str and type(p) is str and type(q) is str
        and 0 <= t <= MAX_ID and 0 <= ts < _MAX_TIMESTAMP and 0 <= es < _MAX_TIMESTAMP
        and len(s) <= MAX_SYMBOL_LENGTH and s.isascii() and s.isalnum() and p.isascii() and q.isascii()
        and p.replace(".", "", 1).isdigit() and q.replace(".", "", 1).isdigit()
        and decimal_fits(p) and decimal_fits(q)
    ):
        return Trade(s.upper(), TRADE, t, p, q, ts, es, mk, None, None, received_us)
    return Trade(
        _symbol(s), TRADE, _identifier(t), _decimal(p), _decimal(q), _timestamp(ts), _timestamp(es),
        _boolean(mk), None, None, received_us,
    )


def _agg_trade_from_ws(m: dict[str, Any], received_us: int | None) -> Trade:
    first, last = _identifier(m["f"]), _identifier(m["l"])
    if last < first:
        raise ValueError(f"last trade id {last} before first {first}")
    return Trade(
        _symbol(m["s"]),
        AGG_TRADE,
        _identifier(m["a"]),
        _decimal(m["p"]),
        _decimal(m["q"]),
        _timestamp(m["T"]),
        _timestamp(m["E"]),
        _boolean(m["m"]),
        first,
        last,
        received_us,
    )


def trade_from_rest(symbol: str, channel: str, row: Mapping[str, Any]) -> Trade:
    """A trade from a `historicalTrades` / `trades` row or an `aggTrades` row; ParseError if malformed."""
    try:
        if channel == TRADE:
            ts = _timestamp(row["time"])
            return Trade(
                symbol, TRADE, _identifier(row["id"]), _decimal(row["price"]), _decimal(row["qty"]),
                ts, ts, _boolean(row["isBuyerMaker"]),
            )
        ts = _timestamp(row["T"])
        first, last = _identifier(row["f"]), _identifier(row["l"])
        return Trade(
            symbol, AGG_TRADE, _identifier(row["a"]), _decimal(row["p"]), _decimal(row["q"]),
            ts, ts, _boolean(row["m"]), first, last,
        )
    except _PARSE_FAILURES as exc:
        raise ParseError(f"bad REST {channel} row: {type(exc).__name__}: {exc}") from None


def _reply(m: dict[str, Any]) -> Reply:
    request_id = m["id"]
    if request_id is not None and type(request_id) not in (int, str):
        raise ParseError("reply id is neither an integer, a string nor null")
    error = m.get("error")
    if isinstance(error, dict):  # {"error": {"code": 2, "msg": "..."}, "id": 1}
        return Reply(request_id, None, _error_code(error.get("code")), str(error.get("msg")))
    if "code" in m:  # {"code": 0, "msg": "Unknown property", "id": 1}
        return Reply(request_id, None, _error_code(m.get("code")), str(m.get("msg")))
    if "result" not in m:
        raise ParseError("reply without result or error")
    return Reply(request_id, m["result"])


def _error_code(code: Any) -> int:
    return code if type(code) is int else -1


def validate_trade(trade: Trade) -> Trade:
    """`trade` if every field is what the parser would have made, else ParseError naming the field.

    For trades that crossed a trust boundary after parsing (the Redis hand-off buffer, docs/security.md,
    "Redis is the trust boundary"): whoever can write there must not be able to store what the exchange could not send.
    """
    try:
        if type(trade) is not Trade or trade.channel not in CHANNELS:
            raise TypeError(f"not a trade of a known channel: {trade!r:.200}")
        if _symbol(trade.symbol) != trade.symbol:
            raise ValueError(f"symbol {trade.symbol!r} is not upper case")
        _identifier(trade.trade_id)
        _decimal(trade.price_text)
        _decimal(trade.quantity_text)
        _timestamp(trade.trade_ts)
        _timestamp(trade.event_ts)
        _boolean(trade.is_buyer_maker)
        if trade.channel == AGG_TRADE:
            if _identifier(trade.last_trade_id) < _identifier(trade.first_trade_id):
                raise ValueError("last trade id before first")
        elif trade.first_trade_id is not None or trade.last_trade_id is not None:
            raise ValueError("first/last trade ids on a plain trade")
        if trade.received_us is not None:
            _timestamp(trade.received_us)
    except _PARSE_FAILURES as exc:
        raise ParseError(f"invalid trade: {type(exc).__name__}: {exc}") from None
    return trade


def decimal_fits(text: str) -> bool:
    """True if a plain decimal string fits numeric(28,8) exactly (no rounding): at most 20 integer
    digits and 8 decimals, not counting leading or trailing zeros."""
    point = text.find(".")
    if point == -1:
        if len(text) <= DECIMAL_INTEGER_DIGITS:
            return True
    elif point <= DECIMAL_INTEGER_DIGITS and len(text) - point - 1 <= DECIMAL_PLACES:
        return True  # the common case, decided without building new strings
    whole, _, fraction = text.partition(".")
    return len(whole.lstrip("0")) <= DECIMAL_INTEGER_DIGITS and len(fraction.rstrip("0")) <= DECIMAL_PLACES


def _symbol(value: Any) -> str:
    if type(value) is not str or not value.isascii() or not value.isalnum() or len(value) > MAX_SYMBOL_LENGTH:
        raise TypeError(f"symbol {value!r:.40} is not alphanumeric text of at most {MAX_SYMBOL_LENGTH} characters")
    return value.upper()


def _identifier(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_ID:
        raise TypeError(f"id {value!r} is not an integer from 0 to 2**63-1")
    return value


def _timestamp(value: Any) -> int:
    if type(value) is not int or not 0 <= value < _MAX_TIMESTAMP:
        raise TypeError(f"timestamp {value!r} is not an integer in range")
    return value


def _decimal(value: Any) -> str:
    # Plain ASCII digits with at most one point: what the exchange sends, and nothing Decimal() would
    # read differently (no sign, exponent, NaN, whitespace, underscores or non-ASCII digits).
    if type(value) is not str or not value.isascii() or not value.replace(".", "", 1).isdigit():
        raise ValueError(f"decimal {value!r:.60} is not a plain non-negative decimal string")
    if not decimal_fits(value):
        raise ValueError(f"decimal {value!r:.60} does not fit numeric(28,8) (20 digits and 8 decimals)")
    return value


def _boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise TypeError(f"flag {value!r} is not a boolean")
    return value
