"""Which stream a log line is about: a contextvar that every layer binds and the log formatters read.

`with stream_context("btcusdt@trade"): ...` binds the id; asyncio tasks created inside inherit it, so every
coroutine of a stream logs with its id ("-" outside any stream).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_STREAM: contextvars.ContextVar[str] = contextvars.ContextVar("stream", default="-")


def current_stream() -> str:
    return _STREAM.get()


@contextlib.contextmanager
def stream_context(sid: str) -> Iterator[None]:
    """Every line logged inside (and in asyncio tasks started inside) carries `sid`."""
    token = _STREAM.set(sid)
    try:
        yield
    finally:
        _STREAM.reset(token)
