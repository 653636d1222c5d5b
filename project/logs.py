"""Log lines: the stream id on every line of a stream, one safe line per record (no Django import).

`with stream_context("btcusdt@trade"): ...` (streams.binance.logcontext) binds the id in a contextvar that
asyncio tasks created inside inherit; `StreamFilter` copies it onto each record as `record.stream` ("-"
outside any stream).

Two formats (LOG_FORMAT): `PlainFormatter` writes `<UTC time> <LEVEL> <logger> [<stream>] <message>`,
`JsonFormatter` one JSON object per line for log shippers. Text from outside (exchange error messages,
raw frames, request paths) reaches log messages, so neither format lets it start a line of its own or
drive a terminal ("No silent failure" / "Safe by default" issues):
- plain: every control character of the rendered line (C0, DEL, C1, U+2028/U+2029, bidi controls) is
  escaped as `\\n`, `\\x1b`, `\\u2028`...; a traceback stays a multi-line traceback (its frames and source
  lines are ours), but the message line of each exception in its chain is escaped to one line, and every
  other control character in it except the traceback's own line breaks is escaped too.
- json: the encoder escapes C0 characters; DEL, C1, U+2028/U+2029 and the bidi controls, which JSON allows
  raw, are escaped as well (`\\u2028`), so no reader takes anything inside a JSON line for a line break.
Backslashes are not escaped: a literal `\\n` in the output may have been a backslash and an `n`.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import orjson

from streams.binance.logcontext import current_stream, stream_context

__all__ = ["JsonFormatter", "PlainFormatter", "StreamFilter", "stream_context"]

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(stream)s] %(message)s"

# Characters that end a line for some reader (str.splitlines, JavaScript, terminals) or drive a terminal.
_BIDI = [0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *_BIDI]
_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_ESCAPES = {c: _NAMED.get(c) or (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CONTROLS}
_ESCAPES_BUT_NEWLINE = {c: text for c, text in _ESCAPES.items() if c != 0x0A}
# orjson writes DEL, C1, U+2028/U+2029 and the bidi controls raw (UTF-8 is self-synchronising, and JSON
# outside strings is printable ASCII, so these byte patterns are always whole characters inside strings).
_JSON_RAW_CONTROLS = re.compile(rb"\x7f|\xc2[\x80-\x9f]|\xe2\x80[\x8e\x8f\xa8-\xae]|\xe2\x81[\xa6-\xa9]")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class StreamFilter(logging.Filter):
    """Adds `record.stream` (the bound stream id, or "-") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "stream"):
            record.stream = current_stream()
        return True


def escape_control(text: str) -> str:
    """`text` on one line: control characters written as `\\n`, `\\r`, `\\x1b`, `\\u2028`..."""
    if text.isprintable():  # the common case, checked in C; False for every character escaped below
        return text
    return text.translate(_ESCAPES)


def utc_time(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds: `2026-12-01T16:19:36.796Z`."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(record.created))}.{int(record.msecs):03d}Z"


def format_traceback(exc_info: ExcInfo) -> str:
    """A normal multi-line traceback whose exception messages (text from outside) are each one line."""
    text = "".join(traceback.format_exception(*exc_info))
    for exc in _chain(exc_info[1]):
        message = "".join(traceback.format_exception_only(type(exc), exc))
        text = text.replace(message, escape_control(message.rstrip("\n")) + "\n")
    return text.rstrip("\n").translate(_ESCAPES_BUT_NEWLINE)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception and those it was raised from or while handling, each once (chains may be cycles)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if current is not None and id(current) not in seen:
            seen.add(id(current))
            yield current
            todo += [current.__context__, current.__cause__]


class PlainFormatter(logging.Formatter):
    """`2026-12-01T16:19:36.796Z INFO streams.binance.client [btcusdt@trade] connected to ...`, escaped."""

    def __init__(self, fmt: str | None = PLAIN_FORMAT, datefmt: str | None = None, **kwargs: Any) -> None:
        super().__init__(fmt, datefmt, **kwargs)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return utc_time(record) if datefmt is None else super().formatTime(record, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        # Not the base class's format(): its cached record.exc_text may come from another formatter.
        _ensure_stream(record)  # formatMessage reads record.stream
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = escape_control(self.formatMessage(record))
        if record.exc_info:
            line += "\n" + format_traceback(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text.rstrip("\n").translate(_ESCAPES_BUT_NEWLINE)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info).translate(_ESCAPES_BUT_NEWLINE)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, stream, message, process, thread[, exc][, stack]."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc_time(record), "level": record.levelname, "logger": record.name,
            "stream": _ensure_stream(record), "message": record.getMessage(),
            "process": record.process, "thread": record.threadName,
        }
        if record.exc_info:
            entry["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _json_line(entry)


def _json_line(entry: dict[str, Any]) -> str:
    try:
        raw = orjson.dumps(entry, default=str)
    except orjson.JSONEncodeError:  # a lone surrogate (undecodable bytes decoded with surrogateescape)
        raw = orjson.dumps({key: _valid_utf8(value) for key, value in entry.items()}, default=str)
    return _JSON_RAW_CONTROLS.sub(_json_escape, raw).decode()


def _valid_utf8(value: Any) -> Any:
    return value.encode("utf-8", "backslashreplace").decode() if isinstance(value, str) else value


def _json_escape(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match.group().decode())


def _ensure_stream(record: logging.LogRecord) -> str:
    """The record's stream id: a handler configured without StreamFilter still gets it."""
    stream = getattr(record, "stream", None)
    if stream is None:
        stream = record.stream = current_stream()
    return str(stream)
