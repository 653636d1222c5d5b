"""An idle service is quiet: the Procfile's beat, worker, streams and Flower, run as `make run` runs them, print
a summary line per process and interval and no line per tick; Flower's task list holds no ticks."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from project.celery import app
from tests.helpers import ROOT, database_url, free_port, wait_for
from tests.project.launcher.helpers import Started
from workers.summary import Tally, beat_part, streams_part, ticks_part

# `HH:MM:SS name | 2026-12-01T16:19:36.796Z INFO logger [-] message`: the runner's prefix, then a log line.
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<process>\S+)\s+\| \S+Z (?P<level>[A-Z]+) (?P<logger>\S+) \[[^\]]*\] "
                      r"(?P<message>.*)$")
STARTING = ("Connected to", " ready.", "beat: Starting...")  # each process says these once
LOGIN = ("watcher", "a-long-enough-password")


def test_a_tally_counts_what_grew_since_the_last_line() -> None:
    tally = Tally()
    tally.stream_progress("task-1", 0, 0)
    tally.stream_progress("task-1", 120, 1)
    tally.stream_progress("task-2", 30, 0)
    tally.add("tick flush", 3)
    tally.add("written", 150)
    counts, hosted = tally.take()
    assert streams_part(counts, hosted) == "2 streams hosted; 150 trades handed to the buffer; 1 errors"
    assert ticks_part(counts, "7 trades waiting") == ("ticks run: flush 3; 150 trades written; 0 failed, "
                                                       "0 transient errors; buffer: 7 trades waiting")
    tally.stream_progress("task-1", 200, 1)
    tally.stream_ended("task-2")
    counts, hosted = tally.take()
    assert (counts["handed"], hosted) == (80, 1), "only what grew since the last line"
    tally.add("sent flush_trades", 60)
    tally.add("sent supervise_streams", 6)
    assert beat_part(tally.take()[0]) == "sent 66 tasks: flush_trades 60, supervise_streams 6"


@pytest.fixture
def procfile_processes(clean_redis: None) -> Iterator[tuple[Started, int]]:
    """beat, worker, streams and Flower from the Procfile, through make run's process runner, for the test's
    database and Redis, with the migrations' schedule of the flush and the supervision; a summary every 2 s
    instead of every minute."""
    for name, task, seconds in (("flush trades", "flush_trades", 1), ("supervise streams", "supervise_streams", 10)):
        schedule, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.update_or_create(name=name, defaults={
            "task": f"workers.tasks.{task}", "interval": schedule, "expire_seconds": 10, "enabled": True})
    port = free_port()
    env = {**os.environ, "DEBUG": "1", "ENV_FILE": "", "DATABASE_URL": database_url(), "REDIS_URL": settings.REDIS_URL,
           "LOG_LEVEL": "INFO", "LOG_SUMMARY_INTERVAL": "2", "STREAMS_CONCURRENCY": "4", "FLOWER_PORT": str(port),
           "FLOWER_BASIC_AUTH": ":".join(LOGIN)}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # as make run's processes: the project's settings
    started = Started([sys.executable, "-m", "project.launcher.procs", "-f", str(ROOT / "Procfile"), "-e", os.devnull,
                       "beat", "worker", "streams", "flower"], env)
    try:
        yield started, port
    finally:
        started.kill()


def summaries(started: Started, process: str) -> list[str]:
    return [m["message"] for line in started.lines if (m := LOG_LINE.match(line))
            and m["process"] == process and m["logger"] == "workers.summary"]


def flower_tasks(port: int) -> dict[str, Any]:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/api/tasks", auth=LOGIN, timeout=5)
    except httpx.HTTPError:
        return {}
    return answer.json() if answer.status_code == 200 else {}


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_an_idle_service_says_a_line_per_process_and_interval_and_nothing_per_tick(
        procfile_processes: tuple[Started, int]) -> None:
    started, port = procfile_processes
    # Idle for a while: at least five summary lines of each process, the flush ticking every second meanwhile.
    wait_for(lambda: all(len(summaries(started, name)) >= 5 for name in ("beat", "worker", "streams")), timeout=90)
    ticks = Counter(int(n) for line in summaries(started, "worker") for n in re.findall(r"flush (\d+)", line))
    assert sum(ticks.elements()) >= 5, "the flush ran, every second"
    assert re.fullmatch(r"last \d s: 0 streams hosted; 0 trades handed to the buffer; 0 errors",
                        summaries(started, "streams")[-1])
    assert re.fullmatch(r"last \d s: sent \d+ tasks: flush_trades \d+.*", summaries(started, "beat")[-1])
    assert re.fullmatch(r"last \d s: ticks run: flush \d+.*; 0 trades written; 0 failed, 0 transient errors; "
                        r"buffer: 0 trades waiting", summaries(started, "worker")[-1])
    said = [m for line in started.lines if (m := LOG_LINE.match(line)) and m["process"] != "flower"]
    others = [m.string for m in said
              if m["logger"] != "workers.summary" and not any(text in m["message"] for text in STARTING)]
    assert others == [], "an idle service says nothing but its summaries (no line per tick)"
    # Flower saw the worker's task events (a task that is not a tick shows), and no tick.
    app.send_task("celery.accumulate", args=[1], queue="celery")
    tasks = wait_for(lambda: flower_tasks(port) if any(t.get("name") == "celery.accumulate"
                                                       for t in flower_tasks(port).values()) else None, timeout=60)
    assert sorted({task.get("name") for task in tasks.values()}) == ["celery.accumulate"]
