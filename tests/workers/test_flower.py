"""Flower against the real broker lists the running stream tasks, with the state their events give."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest
from django.conf import settings

from streams.binance.protocol import TRADE
from streams.fake.exchange import running_exchange
from tests.helpers import ROOT, database_url, wait_for
from tests.workers.conftest import Beat
from workers.registry import enable_stream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_flower_lists_the_running_stream_task_as_streaming(fast_settings: Any, celery_worker_threads: Any) -> None:
    port = _free_port()
    env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", "REDIS_URL": settings.REDIS_URL,
           "DATABASE_URL": database_url(), "FLOWER_BASIC_AUTH": "watcher:7f3kq9-xw2p1"}
    # As the Procfile starts it: launcher.flower checks the login, binds 127.0.0.1, then runs `celery flower`.
    flower = subprocess.Popen([sys.executable, "-m", "project.launcher.flower", f"--port={port}"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with running_exchange(symbols={"BTCUSDT": 20.0}, seed=81) as ex:
            fast_settings.BINANCE_WS_URL, fast_settings.BINANCE_REST_URL = ex.ws_url, ex.rest_url
            wait_for(lambda: _answers(port), timeout=30)
            assert httpx.get(f"http://127.0.0.1:{port}/api/tasks").status_code == 401  # login needed
            enable_stream("BTCUSDT", TRADE)
            with Beat():
                try:
                    task = wait_for(lambda: _streaming_task(port), timeout=60)
                except AssertionError:
                    raise AssertionError(f"flower never listed a STREAMING task; last answer: {LAST}") from None
        assert task["name"] == "workers.tasks.run_stream"
        assert task["state"] == "STREAMING"
        assert "BTCUSDT" in str(task.get("kwargs"))
    finally:
        flower.terminate()
        flower.wait(timeout=30)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


LAST: list[str] = []


def _streaming_task(port: int) -> dict[str, Any] | None:
    response = httpx.get(f"http://127.0.0.1:{port}/api/tasks", auth=("watcher", "7f3kq9-xw2p1"), timeout=5)
    LAST[:] = [f"{response.status_code} {response.text[:300]}"]
    if response.status_code != 200:
        return None
    for task in response.json().values():
        if task.get("name") == "workers.tasks.run_stream" and task.get("state") == "STREAMING":
            return dict(task)
    return None
