"""The Celery application; configuration comes from Django settings under the CELERY_ namespace."""

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import beat_init, setup_logging, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


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
