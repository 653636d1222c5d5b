"""What a live page's WebSocket carries: trade frames, control frames and close codes. No I/O.

Server to page, text frames only:
- a JSON array of trades (the broadcast's own format, `streams.broadcast.trade_message`): every trade
  of the page's subscription that arrived since the previous frame, oldest first; with `?format=compact`
  (the live page's) the same trades in a quarter of the bytes (`compact_frame`);
- a JSON object with a `type`: `hello` first (the heartbeat period the page watches for), then `state`
  every heartbeat period (the feed, and per stream its state, trades/s and lag: what the page showed
  before, never more).
A page sends nothing; a frame over the limit closes it (1009).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

import orjson

# Close codes a page understands (RFC 6455 7.4.1 where one fits; 4000-4999 are the application's).
CLOSE_GOING_AWAY: Final = 1001      # the web process is stopping: reconnect
CLOSE_TOO_BIG: Final = 1009         # the page sent a frame over the limit
CLOSE_FEED_FAILED: Final = 1011     # the process's live feed failed unexpectedly: reconnect
CLOSE_SERVER_FULL: Final = 1013     # "try again later": the process has its LIVE_MAX_CONNECTIONS pages
CLOSE_BAD_SYMBOL: Final = 4400
CLOSE_TOO_SLOW: Final = 4408        # the page fell too far behind and was dropped so the others never wait

FEED_LIVE: Final = "live"
FEED_INTERRUPTED: Final = "interrupted"
FEED_STARTING: Final = "starting"

# A trade as it crosses Redis (the trust boundary: what comes from it is re-validated): field -> accepted types.
_TRADE_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "ticker_symbol": (str,), "channel": (str,), "trade_id": (int,), "price": (str,), "volume": (str,),
    "trade_ts": (int,), "event_ts": (int,), "is_market_maker": (bool,),
}
_SYMBOL: Final = re.compile(r"[A-Z0-9]{2,20}")
_CHANNEL: Final = re.compile(r"trade|aggTrade")
_DECIMAL: Final = re.compile(r"\d{1,30}(\.\d{1,30})?([eE][-+]?\d{1,3})?")  # as str(Decimal) may write it


def clean_trade(item: Any) -> dict[str, Any] | None:
    """The trade with exactly the known fields, or None when a field is missing or of the wrong kind."""
    if not isinstance(item, dict):
        return None
    clean: dict[str, Any] = {}
    for name, kinds in _TRADE_FIELDS.items():
        value = item.get(name)
        if not isinstance(value, kinds) or (kinds == (int,) and isinstance(value, bool)):
            return None
        clean[name] = value
    if not (_SYMBOL.fullmatch(clean["ticker_symbol"]) and _CHANNEL.fullmatch(clean["channel"])
            and _DECIMAL.fullmatch(clean["price"]) and _DECIMAL.fullmatch(clean["volume"])):
        return None
    return clean


def clean_batch(text: Any) -> tuple[list[dict[str, Any]], int]:
    """(valid trades, how many items were refused) of a broadcast batch's JSON text."""
    try:
        items = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        return [], 1
    if not isinstance(items, list):
        return [], 1
    trades = [t for t in map(clean_trade, items) if t is not None]
    return trades, len(items) - len(trades)


def by_symbol(trades: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The trades grouped by symbol, in order of first appearance (a batch may hold several)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for trade in trades:
        groups.setdefault(trade["ticker_symbol"], []).append(trade)
    return list(groups.items())


def trades_frame(groups: Iterable[Sequence[dict[str, Any]]]) -> str:
    """The default frame: one JSON array of the trades, in the broadcast's own format."""
    return orjson.dumps([trade for group in groups for trade in group]).decode()


def compact_frame(groups: Iterable[Sequence[dict[str, Any]]], sent_ms: int) -> str:
    """The live page's frame (`?format=compact`), about a quarter of the bytes at the same trades:
    `{"type": "trades", "n": <trades>, "sent_ms": <server time>, "streams": {"btcusdt@trade": [row, ...]}}`,
    a row `[id, "price", "quantity", trade time, event time - trade time, 1 if the buyer made it else 0]`
    where the id and the trade time are differences from the stream's previous row (the first row's are
    absolute). Prices and quantities stay the exchange's exact text."""
    streams: dict[str, list[list[Any]]] = {}
    previous: dict[str, tuple[int, int]] = {}
    count = 0
    for group in groups:
        for t in group:
            key = f"{t['ticker_symbol'].lower()}@{t['channel']}"
            last_id, last_ts = previous.get(key, (0, 0))
            streams.setdefault(key, []).append([t["trade_id"] - last_id, t["price"], t["volume"],
                                                t["trade_ts"] - last_ts, t["event_ts"] - t["trade_ts"],
                                                1 if t["is_market_maker"] else 0])
            previous[key] = (t["trade_id"], t["trade_ts"])
            count += 1
    return orjson.dumps({"type": "trades", "n": count, "sent_ms": sent_ms, "streams": streams}).decode()


def expand_compact(frame: dict[str, Any]) -> list[dict[str, Any]]:
    """The trades of a compact frame, in the broadcast's format (what the page's script does)."""
    trades = []
    for stream, rows in frame["streams"].items():
        symbol, channel = stream.split("@")
        trade_id = trade_ts = 0
        for delta_id, price, volume, delta_ts, event_after, maker in rows:
            trade_id += delta_id
            trade_ts += delta_ts
            trades.append({"ticker_symbol": symbol.upper(), "channel": channel, "trade_id": trade_id,
                           "price": price, "volume": volume, "trade_ts": trade_ts,
                           "event_ts": trade_ts + event_after, "is_market_maker": bool(maker)})
    return trades


def ws_text_frame(text: str) -> bytes:
    """A server's WebSocket text frame carrying `text`: unfragmented, unmasked, uncompressed (RFC 6455 5.2;
    an uncompressed message is valid under permessage-deflate too)."""
    data = text.encode()
    size = len(data)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + data


def hello_frame(symbol: str | None, heartbeat_s: float, max_frame: int) -> str:
    return orjson.dumps({"type": "hello", "symbol": symbol, "heartbeat_s": heartbeat_s,
                         "max_frame": max_frame}).decode()


def state_frame(feed: str, streams: Sequence[dict[str, Any]] | None, server_ms: int) -> str:
    """The feed (`starting`, `live` or `interrupted`) and the streams' public state (None: it could not be read)."""
    return orjson.dumps({"type": "state", "feed": feed, "streams": streams, "server_ms": server_ms}).decode()


# What a page is shown of a stream: what it showed when it polled (the status page has the rest, for staff).
PUBLIC_STREAM_FIELDS: Final = ("stream", "symbol", "state", "trades_per_s", "lag_ms")


def streams_of(symbol: str | None, streams: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The public fields of the streams a page subscribed to `symbol` (None: every symbol) is shown."""
    if streams is None:
        return None
    return [{name: s.get(name) for name in PUBLIC_STREAM_FIELDS} for s in streams
            if symbol is None or s["symbol"] == symbol]


def close_reason(text: str) -> str:
    """A close reason that fits the 123 bytes RFC 6455 allows."""
    return text.encode()[:123].decode(errors="ignore")
