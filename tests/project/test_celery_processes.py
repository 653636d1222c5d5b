"""What the Celery processes set up for themselves (project/celery.py)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from celery.signals import beat_init, worker_init
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper

from project.celery import QUERIES_KEPT

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
