"""The stream client's configuration from Django settings (the one bridge from settings to the core)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from django.conf import settings

from streams.binance.backoff import RETRY
from streams.binance.client import ClientConfig


def client_config(streams: Iterable[tuple[str, str]]) -> ClientConfig:
    """A ClientConfig for `streams` with the endpoints and tunables of the settings."""
    return ClientConfig.for_streams(
        settings.BINANCE_WS_URL,
        settings.BINANCE_REST_URL,
        streams,
        # The reconnect policy's defaults (streams.binance.backoff.RETRY), as the settings override them.
        reconnect=dataclasses.replace(RETRY["reconnect"], base=settings.BINANCE_BACKOFF_BASE,
                                      cap=settings.BINANCE_BACKOFF_CAP,
                                      reset_after=settings.BINANCE_BACKOFF_RESET_AFTER),
        silence_timeout=settings.BINANCE_SILENCE_TIMEOUT,
        probe_timeout=settings.BINANCE_PROBE_TIMEOUT,
        rotate_after=settings.BINANCE_ROTATE_AFTER,
        backfill_max_trades=settings.BINANCE_BACKFILL_MAX_TRADES,
        queue_size=settings.BINANCE_QUEUE_SIZE,
        streams_per_connection=settings.BINANCE_STREAMS_PER_CONNECTION,
        # Microseconds everywhere: a trade from the stream, from REST and from the archive is
        # then the same row, to the microsecond.
        micros=True,
    )
