"""A real `celery worker`, started as the Procfile starts it (no -l), logs the project's INFO lines."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import pytest

from streams.binance.protocol import TRADE
from streams.fake.exchange import FakeExchange, running_exchange
from tests.helpers import ROOT, wait_for
from tests.workers.conftest import Beat
from tests.workers.test_worker_processes import worker_env
from workers.registry import enable_stream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PLAIN_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<level>[A-Z]+) (?P<logger>\S+) "
                        r"\[(?P<stream>[^\]]+)\] (?P<message>.*)")


class Lines:
    """Collects a pipe's lines while the process runs (split on LF only: a raw CR must show)."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            self.lines.append(raw.decode("utf-8", "backslashreplace").removesuffix("\n"))

    def finish(self) -> list[str]:
        self._thread.join(timeout=30)
        return list(self.lines)


@contextmanager
def procfile_worker(exchange: FakeExchange, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], Lines]]:
    """`celery worker` as the Procfile's `streams` line runs it: no -l, so LOG_LEVEL alone decides."""
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "project", "worker", "-Q", "streams,celery", "-P", "threads",
         "-c", "8", "-n", "logs@%h", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=worker_env(exchange, **env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = Lines(process.stderr)
    try:
        yield process, stderr
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        stderr.finish()


def is_log_object(line: str) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and {"time", "level", "logger", "stream", "message", "process"} <= entry.keys()


def stop(process: subprocess.Popen[bytes], stderr: Lines) -> list[str]:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    return stderr.finish()


@pytest.fixture
def fast(fast_settings: Any, clean_redis: None) -> Any:
    return fast_settings


def test_a_procfile_worker_logs_the_stream_s_info_lines_with_its_id(fast: Any) -> None:
    with running_exchange(symbols={"BTCUSDT": 20.0}, seed=51) as ex:
        enable_stream("BTCUSDT", TRADE)
        with Beat(), procfile_worker(ex, LOG_FORMAT="plain") as (process, stderr):
            def logged(logger: str, text: str) -> list[re.Match[str]]:
                matches = (PLAIN_LINE.fullmatch(line) for line in stderr.lines)
                return [m for m in matches if m and m["logger"] == logger and text in m["message"]]

            [started, *_] = wait_for(lambda: logged("workers.runtime", "started by logs@"), timeout=60)
            assert (started["level"], started["stream"]) == ("INFO", "btcusdt@trade")
            # A shared connection carries many streams: its lines name them instead of carrying one id.
            [connected, *_] = wait_for(lambda: logged("streams.binance.slot", "connected with 1 streams"), timeout=60)
            assert connected["level"] == "INFO" and "btcusdt@trade" in connected["message"]
            assert wait_for(lambda: logged("celery.worker.consumer.connection", "Connected to redis://"))
            stop(process, stderr)


def test_with_log_format_json_every_line_the_worker_logs_is_a_json_object(fast: Any) -> None:
    with running_exchange(symbols={"BTCUSDT": 20.0}, seed=52) as ex:
        enable_stream("BTCUSDT", TRADE)
        with Beat(), procfile_worker(ex, LOG_FORMAT="json") as (process, stderr):
            def connected() -> bool:
                return any('"logger":"workers.runtime"' in line and "started by" in line for line in stderr.lines)

            wait_for(connected, timeout=60)
            lines = stop(process, stderr)
    # Before Celery configures logging, Python may write warnings of its own to stderr (running as root:
    # Celery's SecurityWarning); from the first line our handler writes to the exit, every line is JSON.
    first = next(i for i, line in enumerate(lines) if line.startswith('{"time":'))
    assert [line for line in lines[first:] if not is_log_object(line)] == []
    entries = [json.loads(line) for line in lines[first:]]
    [entry, *_] = [e for e in entries if e["logger"] == "workers.runtime" and "started by" in e["message"]]
    assert (entry["level"], entry["stream"]) == ("INFO", "btcusdt@trade")
    assert {e["logger"] for e in entries} >= {"workers.runtime", "celery.worker.consumer.connection"}
