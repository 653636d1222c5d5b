"""What the Celery processes set up for themselves (project/celery.py): few queries kept, and quiet ticks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery.app import trace
from celery.signals import beat_init, worker_init
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper

from project.celery import QUERIES_KEPT, RUN_LOGGERS, Tick, TickRunsFilter, app

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("signal", [worker_init, beat_init], ids=["worker", "beat"])
@pytest.mark.filterwarnings("ignore:DjangoFixup.on_worker_init called without a sender")  # no worker here
@pytest.mark.filterwarnings("ignore:Limit for query logging exceeded")  # what the test makes happen
def test_a_celery_process_with_debug_on_keeps_few_queries_per_connection(signal: Any, settings: Any) -> None:
    # With DEBUG on (make run's default), Django kept the last 9,000 queries of each connection of the
    # flush, the supervisor and beat's scheduler, for ever: megabytes that the soak saw as a leak.
    settings.DEBUG = True
    default = BaseDatabaseWrapper.queries_limit
    kept: list[int] = []

    def a_task_thread() -> None:  # a new thread gets a new connection, as a pool thread of the worker does
        try:
            with connection.cursor() as cursor:
                for _ in range(QUERIES_KEPT + 50):
                    cursor.execute("SELECT 1")
            kept.append(len(connection.queries))
        finally:
            connection.close()

    try:
        signal.send(sender=None)
        thread = threading.Thread(target=a_task_thread)
        thread.start()
        thread.join(timeout=30)
    finally:
        BaseDatabaseWrapper.queries_limit = default
    assert kept == [QUERIES_KEPT]


class Kept(logging.Handler):
    """The records that reach a handler at INFO, as the console handler (LOG_LEVEL=INFO) gets them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


@pytest.fixture
def kept() -> Iterator[Kept]:
    """Celery's run loggers with the project's filter, as the setup_logging receiver installs it."""
    handler, loggers = Kept(), [logging.getLogger(name) for name in RUN_LOGGERS]
    levels = [one.level for one in loggers]
    for one in loggers:
        one.addHandler(handler)
        one.addFilter(TickRunsFilter())
        one.setLevel(logging.INFO)
    yield handler
    for one, level in zip(loggers, levels, strict=True):
        one.removeHandler(handler)
        one.filters = [f for f in one.filters if not isinstance(f, TickRunsFilter)]
        one.setLevel(level)


def test_celerys_lines_about_each_run_of_a_tick_are_debug_and_the_rest_stay(kept: Kept) -> None:
    import workers.tasks  # noqa: F401 - registers the tasks

    flush, stream = {"name": "workers.tasks.flush_trades", "id": "a"}, {"name": "workers.tasks.run_stream", "id": "b"}
    for context in (flush, stream):  # as celery.worker.strategy and celery.app.trace log them
        trace.info(trace.LOG_RECEIVED, context)
        trace.info(trace.LOG_SUCCESS, {**context, "runtime": 0.01, "return_value": 0})
        logging.getLogger("celery.app.trace").error(trace.LOG_FAILURE, {**context, "description": "raised", "exc": "E"})
    logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", "flush trades",
                                          "workers.tasks.flush_trades")
    logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", "a user's", "reports.tasks.daily")
    assert kept.lines == [
        ("ERROR", "Task workers.tasks.flush_trades[a] raised: E"),  # a tick's failure is still said
        ("INFO", "Task workers.tasks.run_stream[b] received"),
        ("INFO", "Task workers.tasks.run_stream[b] succeeded in 0.01s: 0"),
        ("ERROR", "Task workers.tasks.run_stream[b] raised: E"),
        ("INFO", "Scheduler: Sending due task a user's (reports.tasks.daily)"),  # not a tick: as before
    ]


def test_the_periodic_tasks_are_ticks_and_the_stream_task_is_not() -> None:
    from workers import tasks

    ticks = {task.name for task in app.tasks.values() if isinstance(task, Tick)}
    assert ticks == {"workers.tasks.flush_trades", "workers.tasks.supervise_streams", "workers.tasks.ensure_stream",
                     "workers.tasks.check_listing", "workers.tasks.audit_gaps", "workers.tasks.maintain_partitions"}
    assert not isinstance(tasks.run_stream, Tick) and tasks.run_stream.send_events, "Flower shows the streams"
    assert not tasks.flush_trades.send_events, "Flower's task list is not all flush ticks"
