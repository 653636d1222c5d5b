"""A stream's identity: one small immutable type, the same wherever a stream is named.

The client's streams, the runtime's tasks, the leases, the statuses and every Redis key name a stream by a
`StreamId`. Its text (`str()`) is the exchange's stream name, `btcusdt@trade`, which the Redis keys, the
log lines and the metrics' labels keep. It is made by `stream_id` (a symbol and a channel in any case, as a
person or a task's arguments give them), `StreamId.parse` (its text) or `StreamId.of` (a trade's), and
read by field name, never unpacked as a tuple: a field can join it (the market: spot, USD-M, COIN-M)
without touching the places that name a stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from streams.binance.protocol import Trade, normalize_channel, normalize_symbol, split_stream_name, stream_text


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class StreamId:
    """One stream of trades: `symbol` as the exchange writes it (BTCUSDT), `channel` (trade or aggTrade)."""

    symbol: str
    channel: str
    _text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_text", stream_text(self.symbol, self.channel))  # made once: keys use it often

    def __str__(self) -> str:
        return self._text

    @classmethod
    def parse(cls, text: str) -> StreamId:
        """From `btcusdt@trade`; InvalidStreamName (a ValueError) for anything else."""
        symbol, channel = split_stream_name(text)
        return cls(symbol=symbol, channel=channel)

    @classmethod
    def of(cls, trade: Trade) -> StreamId:
        """The stream a trade belongs to."""
        return cls(symbol=trade.symbol, channel=trade.channel)

    @property
    def route(self) -> tuple[str, str]:
        """What a trade of this stream carries to say so: a key for per-trade lookups that make no StreamId."""
        return self.symbol, self.channel

    def owns(self, trade: Trade) -> bool:
        return trade.symbol == self.symbol and trade.channel == self.channel


def by_stream(trades: Iterable[Trade]) -> dict[StreamId, list[Trade]]:
    """The trades of each stream, in their order (a StreamId made once per stream, not per trade)."""
    groups: dict[tuple[str, str], list[Trade]] = {}
    for trade in trades:
        group = groups.get((trade.symbol, trade.channel))  # a StreamId's `route`
        if group is None:
            group = groups[trade.symbol, trade.channel] = []
        group.append(trade)
    return {StreamId.of(group[0]): group for group in groups.values()}


def stream_id(symbol: str, channel: str) -> StreamId:
    """The stream of `symbol` and `channel` in any case (`btcusdt`, `AGGTRADE`); InvalidStreamName if either
    is not one."""
    return StreamId(symbol=normalize_symbol(symbol), channel=normalize_channel(channel))
