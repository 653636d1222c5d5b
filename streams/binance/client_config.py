"""What the stream client needs: its endpoints, its streams and its tunables (the Django settings, or the
command line, fill it in: streams.config)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streams.binance.backoff import RETRY, Policy
from streams.binance.connection import ConnectionSettings
from streams.binance.streamid import StreamId, stream_id


@dataclass(frozen=True)
class ClientConfig:
    """Everything the client needs."""

    ws_url: str
    rest_url: str
    streams: tuple[StreamId, ...]
    reconnect: Policy = RETRY["reconnect"]
    silence_timeout: float = 10.0
    probe_timeout: float = 5.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    open_timeout: float = 10.0
    rotate_after: float = 23.5 * 3600  # the exchange cuts every connection at 24 h
    overlap_timeout: float = 5.0       # longest time two connections run side by side
    backfill_max_trades: int = 100_000
    backfill_retry: Policy = RETRY["backfill"]  # REST not yet showing the trades (it lags the stream slightly)
    queue_size: int = 10_000
    stop_timeout: float = 3.0          # longest a clean stop may take before connections are aborted
    streams_per_connection: int = 200  # at most 1024 (the exchange's limit)
    micros: bool = False               # timeUnit=MICROSECOND on streams, X-MBX-TIME-UNIT on REST

    @classmethod
    def for_streams(cls, ws_url: str, rest_url: str, streams: Iterable[StreamId | tuple[str, str]],
                    **tunables: Any) -> ClientConfig:
        """A config for `streams`: stream ids, or (symbol, channel) as a person gives them (any case)."""
        ids = tuple(s if isinstance(s, StreamId) else stream_id(*s) for s in streams)
        return cls(ws_url=ws_url, rest_url=rest_url, streams=ids, **tunables)

    def connection_settings(self) -> ConnectionSettings:
        return ConnectionSettings(
            ws_url=self.ws_url, open_timeout=self.open_timeout, ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout, silence_timeout=self.silence_timeout,
            probe_timeout=self.probe_timeout, micros=self.micros,
        )
