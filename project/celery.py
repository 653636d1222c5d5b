"""The Celery application; configuration comes from Django settings under the CELERY_ namespace.

Quiet when idle: the periodic ticks (flush every second, supervise every ten, ...) are `Tick` tasks. Celery's
own line for each of their runs (beat's "Sending due task", the worker's "received" and "succeeded") is
DEBUG, and they send no task events, so Flower's task list shows the stream tasks rather than a tick a
second. Their failures are still logged (ERROR, with the traceback) and counted, and each process says what
its ticks did in one summary line a minute (workers/summary.py).
"""

import logging
import os
from collections.abc import Mapping
from typing import Any

from celery import Celery, Task
from celery.signals import beat_init, setup_logging, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Celery's loggers of a task's run: beat's sending, the worker's receiving, the result (failures are ERROR).
RUN_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")


class Tick(Task[Any, Any]):
    """A periodic task whose runs are routine: its per-run lines are DEBUG and it sends no task events."""

    send_events = False


class TickRunsFilter(logging.Filter):
    """Turns Celery's INFO line about one run of a `Tick` task into a DEBUG line (shown when LOG_LEVEL=DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and isinstance(app.tasks.get(_task_of(record) or ""), Tick):
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True


def _task_of(record: logging.LogRecord) -> str | None:
    """The task a run line is about: beat logs (entry name, task name); the worker a dict with "name"."""
    if isinstance(record.args, Mapping):
        name = record.args.get("name")
        return name if isinstance(name, str) else None
    if record.name == "celery.beat" and isinstance(record.args, tuple) and len(record.args) == 2:
        return str(record.args[1])
    return None


@setup_logging.connect
def use_django_logging(loglevel: int | None = None, **_: Any) -> None:
    """Celery's worker and beat configure logging with this signal's receiver, if it has one: ours applies
    LOGGING (the project's format, the stream id, LOG_LEVEL) as django.setup() does in every other process.

    Without a receiver, Celery sets the root logger to its `-l` level, WARNING unless given, on top of
    LOGGING (celery/app/log.py, Logging.setup_logging_subsystem), and the project's INFO lines vanish;
    CELERY_WORKER_HIJACK_ROOT_LOGGER=False only keeps its handlers off. With one, `-l` is not applied.
    """
    from django.conf import settings
    from django.utils.log import configure_logging

    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
    for name in RUN_LOGGERS:
        run_logger = logging.getLogger(name)
        if not any(isinstance(f, TickRunsFilter) for f in run_logger.filters):
            run_logger.addFilter(TickRunsFilter())
    if loglevel is not None and loglevel != logging.getLevelName(settings.LOG_LEVEL) and _given_on_command_line(
            "loglevel"):
        logging.getLogger(__name__).warning("celery -l/--loglevel %s is ignored: LOG_LEVEL=%s sets the level",
                                            logging.getLevelName(loglevel), settings.LOG_LEVEL)


def _given_on_command_line(option: str) -> bool:
    """Whether the running `celery` command got `option` explicitly (not its default)."""
    import click

    context = click.get_current_context(silent=True)
    if context is None or option not in context.params:
        return False
    source = context.get_parameter_source(option)
    return source not in (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


QUERIES_KEPT = 100  # per database connection of a Celery process, when DEBUG is on


@worker_init.connect
@beat_init.connect
def keep_few_queries(**_: Any) -> None:
    """With DEBUG on, Django keeps the last 9,000 queries of every connection for the debug page, and
    nothing in a Celery process ever clears them (Django does at each HTTP request): the flush, the
    supervisor and beat's scheduler grew by megabytes over an hour of `make run` (DEBUG=1 by default),
    which the soak took for a leak. Connections made from now on keep QUERIES_KEPT."""
    from django.db.backends.base.base import BaseDatabaseWrapper

    BaseDatabaseWrapper.queries_limit = QUERIES_KEPT


@beat_init.connect
def no_sent_events_from_beat(sender: Any = None, **_: Any) -> None:
    """Beat sends only the periodic ticks: a task-sent event for each would fill Flower's task list with ticks
    that send no other event. A stream task's sent event comes from the worker that dispatches it."""
    if sender is not None:
        sender.app.conf.task_send_sent_event = False
