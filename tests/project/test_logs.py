"""Log lines: the stream id on each, control characters escaped, one JSON object per line with LOG_FORMAT=json."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from project.logs import JsonFormatter, PlainFormatter, StreamFilter, stream_context
from tests.helpers import ROOT

UTC_MS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
FORGED = "\n2026-12-01T00:00:00.000Z INFO workers.tasks [-] forged line"
CONTROLS = "a\nb\rc\x1b[31md\u2028e\x85f\x00g\x7fh\u202ei"  # LF, CR, ANSI colour, separators, NUL, DEL, bidi


@contextmanager
def captured(formatter: logging.Formatter) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose records go through the project's filter and `formatter` into a string."""
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.addFilter(StreamFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger("tests.project.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, output
    finally:
        logger.removeHandler(handler)


def records(output: io.StringIO) -> list[str]:
    """The written lines, split only where the handler ended a record or a traceback broke a line."""
    return output.getvalue().split("\n")[:-1]


def test_a_plain_line_has_the_utc_time_level_logger_stream_and_message() -> None:
    with captured(PlainFormatter()) as (logger, output), stream_context("btcusdt@trade"):
        logger.info("connected to %s", "ws://127.0.0.1:9443/stream")
    [line] = records(output)
    assert re.fullmatch(UTC_MS + r" INFO tests\.project\.logs \[btcusdt@trade\] connected to ws://127\.0\.0\.1:9443/stream",
                        line), line


def test_plain_lines_escape_control_characters_from_outside() -> None:
    with captured(PlainFormatter()) as (logger, output):
        logger.warning("skipped a bad frame: %s", CONTROLS + FORGED)
    [line] = records(output)
    assert line.isprintable()  # no CR, LF, ESC, C1, U+2028 or bidi control left raw
    assert line.endswith(r"frame: a\nb\rc\x1b[31md\u2028e\x85f\x00g\x7fh\u202ei\n2026-12-01T00:00:00.000Z INFO "
                         r"workers.tasks [-] forged line")


def test_a_plain_traceback_stays_multi_line_but_each_exception_message_is_one_escaped_line() -> None:
    with captured(PlainFormatter()) as (logger, output):
        try:
            try:
                raise ConnectionError("reset by peer" + FORGED)
            except ConnectionError as exc:
                raise ValueError("bad frame\x1b[2J" + FORGED) from exc
        except ValueError:
            logger.exception("stream client failed")
    lines = records(output)
    assert re.fullmatch(UTC_MS + r" ERROR tests\.project\.logs \[-\] stream client failed", lines[0])
    assert lines[1] == "Traceback (most recent call last):"
    assert any(line.startswith('  File "') for line in lines)
    assert r"ConnectionError: reset by peer\n2026-12-01T00:00:00.000Z INFO workers.tasks [-] forged line" in lines
    assert lines[-1] == r"ValueError: bad frame\x1b[2J\n2026-12-01T00:00:00.000Z INFO workers.tasks [-] forged line"
    assert [line for line in lines if re.match(UTC_MS, line)] == [lines[0]]  # nothing forged a record
    assert all(line.isprintable() for line in lines)


def test_a_cyclic_exception_chain_is_formatted_once() -> None:
    first, second = ValueError("first\nline"), KeyError("second")
    first.__cause__, second.__context__ = second, first  # raised from second, which was handling first
    with captured(PlainFormatter()) as (logger, output):
        logger.error("cycle", exc_info=(ValueError, first, None))
    lines = records(output)
    assert lines[0].endswith(" cycle") and r"ValueError: first\nline" in lines
    assert "KeyError: 'second'" in lines


def test_json_gives_one_object_per_record_with_the_raw_text_and_the_traceback() -> None:
    with captured(JsonFormatter()) as (logger, output), stream_context("ethusdt@aggTrade"):
        logger.info("frame: %s", CONTROLS + FORGED)
        try:
            raise ValueError("bad\nframe")
        except ValueError:
            logger.exception("parse failed")
    first, second = (json.loads(line) for line in records(output))
    assert re.fullmatch(UTC_MS, first["time"])
    assert first | {"time": "-"} == {
        "time": "-", "level": "INFO", "logger": "tests.project.logs", "stream": "ethusdt@aggTrade",
        "message": "frame: " + CONTROLS + FORGED, "process": os.getpid(), "thread": threading.current_thread().name}
    assert "exc" not in first
    assert second["level"] == "ERROR" and second["message"] == "parse failed"
    assert second["exc"].startswith("Traceback (most recent call last):\n")
    assert second["exc"].endswith("ValueError: bad\nframe")


def test_json_lines_hold_no_character_that_any_reader_takes_for_a_line_break() -> None:
    with captured(JsonFormatter()) as (logger, output):
        logger.info("%s", CONTROLS + "\x1c\x1d\x1e\x0b\x0c\u2029")
    [line] = records(output)
    assert line.splitlines() == [line] and line.isascii() and line.isprintable()
    assert json.loads(line)["message"] == CONTROLS + "\x1c\x1d\x1e\x0b\x0c\u2029"


def test_outside_any_stream_the_stream_is_a_dash() -> None:
    with captured(JsonFormatter()) as (logger, output):
        with stream_context("btcusdt@trade"):
            logger.info("inside")
        logger.info("after")
    assert [json.loads(line)["stream"] for line in records(output)] == ["btcusdt@trade", "-"]


def test_asyncio_tasks_created_inside_the_context_carry_the_stream_id() -> None:
    async def log(message: str) -> None:
        await asyncio.sleep(0)
        logger.info(message)

    async def main() -> None:
        outside = asyncio.create_task(log("task created outside"))
        with stream_context("btcusdt@trade"):
            inside = asyncio.create_task(log("task created inside"))
        await asyncio.gather(inside, outside)

    with captured(PlainFormatter()) as (logger, output):
        asyncio.run(main())
        with stream_context("ethusdt@trade"):
            asyncio.run(log("asyncio.run inside"))  # its main task copies the caller's context
    assert sorted(line.split(" ", 3)[3] for line in records(output)) == [
        "[-] task created outside", "[btcusdt@trade] task created inside", "[ethusdt@trade] asyncio.run inside"]


def test_a_thread_started_inside_the_context_does_not_carry_it() -> None:
    # Why run_stream binds the id inside the task: Celery's pool threads never see the caller's context.
    with captured(PlainFormatter()) as (logger, output), stream_context("btcusdt@trade"):
        thread = threading.Thread(target=logger.info, args=("from a thread",))
        thread.start()
        thread.join()
    assert records(output)[0].endswith(" [-] from a thread")


def django_process(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", **env}
    return subprocess.run([sys.executable, "-c", f"import django, logging; django.setup(); {code}"], cwd=ROOT,
                          env=environ, capture_output=True, text=True, timeout=60, check=False)


def test_log_format_json_configures_every_django_process_to_write_json() -> None:
    result = django_process("logging.getLogger('workers.tasks').info('a\\nb')", LOG_FORMAT="json", LOG_LEVEL="INFO")
    assert result.returncode == 0, result.stderr
    [entry] = [json.loads(line) for line in result.stderr.splitlines()]
    assert (entry["logger"], entry["level"], entry["stream"]) == ("workers.tasks", "INFO", "-")
    assert entry["message"] == "a\nb"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("LOG_FORMAT", "xml", "LOG_FORMAT='xml' is not a log format (plain or json)"),
    ("LOG_LEVEL", "loud", "LOG_LEVEL='LOUD' is not a level"),
])
def test_a_bad_log_setting_stops_start_up_naming_the_value(name: str, value: str, message: str) -> None:
    result = django_process("", **{name: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured: " + message in result.stderr
