"""Which stream a log line is about: a contextvar that every layer binds and the log formatters read.

`with stream_context("btcusdt@trade"): ...` binds the id; asyncio tasks created inside inherit it, so every
coroutine of a stream logs with its id ("-" outside any stream).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.binance.streamid import StreamId

_STREAM: contextvars.ContextVar[str] = contextvars.ContextVar("stream", default="-")


def current_stream() -> str:
    return _STREAM.get()


@contextlib.contextmanager
def stream_context(sid: StreamId | str) -> Iterator[None]:
    """Every line logged inside (and in asyncio tasks started inside) carries `sid` (its text)."""
    token = _STREAM.set(str(sid))
    try:
        yield
    finally:
        _STREAM.reset(token)
