"""Test helpers: waiting with a deadline, running manage.py commands against the test database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

from streams.fake.exchange import FakeExchange

ROOT = Path(__file__).resolve().parent.parent

# The stream client's timings, shortened so that faults are recovered from within a test's patience.
FAST_CLIENT_ENV = {
    "BINANCE_BACKOFF_BASE": "0.05", "BINANCE_BACKOFF_CAP": "0.5", "BINANCE_BACKOFF_RESET_AFTER": "5",
    "BINANCE_SILENCE_TIMEOUT": "0.5", "BINANCE_PROBE_TIMEOUT": "0.5",
}


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something true, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def database_url(port: int | None = None) -> str:
    """The URL of the database pytest-django set up, optionally through another port (a proxy)."""
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{port or db['PORT']}/{db['NAME']}"


def command_env(exchange: FakeExchange, **overrides: str) -> dict[str, str]:
    env = {**os.environ, **FAST_CLIENT_ENV, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", "ENV_FILE": "",
           "BINANCE_WS_URL": exchange.ws_url, "BINANCE_REST_URL": exchange.rest_url,
           "REDIS_URL": settings.REDIS_URL, "DATABASE_URL": database_url(), "LOG_LEVEL": "INFO"}
    env.update(overrides)
    return env


def manage(*args: str, env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def start_manage(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
