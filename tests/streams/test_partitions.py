"""Monthly partitions of the trades table: made ahead, made on demand, dropped past retention."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from importlib import import_module

import pytest
from django.apps import apps as django_apps
from django.db import connection, connections
from django_celery_beat.models import PeriodicTask

from streams import partitions
from streams.binance.protocol import TRADE, Trade
from streams.models import PriceUpdate
from streams.partitions import Month, maintain
from streams.storage import store_trades
from workers.tasks import maintain_partitions

pytestmark = pytest.mark.django_db(transaction=True)

NOW = datetime(2031, 5, 20, 12, 0, tzinfo=UTC)


def months() -> set[Month]:
    with connection.cursor() as cursor:
        return partitions.existing(cursor)


def trade(trade_id: int, when: datetime) -> Trade:
    ms = int(when.timestamp() * 1000)
    return Trade("BTCUSDT", TRADE, trade_id, "61837.63000000", "0.02000000", ms, ms + 1, False)


def test_month_arithmetic_and_names() -> None:
    assert Month(2026, 12).next() == Month(2027, 1)
    assert Month.of_micros(1_798_761_599_999_999) == Month(2026, 12)  # 2026-12-31T23:59:59.999999Z
    assert Month.of_micros(1_798_761_600_000_000) == Month(2027, 1)
    assert (Month(2024, 2).days, Month(2024, 2).name) == (29, "streams_trade_2024_02")
    assert partitions.month_of_name("streams_trade_2024_02") == Month(2024, 2)
    assert partitions.month_of_name("streams_trade_old") is None
    assert list(partitions.months_between(Month(2024, 11), Month(2025, 2))) == [
        Month(2024, 11), Month(2024, 12), Month(2025, 1), Month(2025, 2)]


def test_maintenance_makes_this_month_and_the_next_ones() -> None:
    done = maintain(NOW, ahead=2)
    assert done.created == ["streams_trade_2031_05", "streams_trade_2031_06", "streams_trade_2031_07"]
    assert {Month(2031, 5), Month(2031, 6), Month(2031, 7)} <= months()
    assert maintain(NOW, ahead=2).created == []  # idempotent
    # Each partition is attached, with its identity index and the parent's BRIN index.
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'streams_trade_2031_06' ORDER BY 1")
        assert [name for (name,) in cursor.fetchall()] == ["streams_trade_2031_06_identity",
                                                           "streams_trade_2031_06_trade_time_idx"]
        cursor.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'streams_trade_2031_06'")
        assert cursor.fetchone()[0] == ("FOR VALUES FROM ('2031-06-01 00:00:00+00') TO ('2031-07-01 00:00:00+00')")


def test_a_month_is_detached_then_dropped_and_a_half_detached_one_is_finished() -> None:
    store_trades([trade(1, datetime(2031, 2, 27, tzinfo=UTC)), trade(2, datetime(2031, 3, 15, tzinfo=UTC)),
                  trade(3, datetime(2031, 4, 30, tzinfo=UTC))])
    with connection.cursor() as cursor:  # autocommit: DETACH ... CONCURRENTLY cannot run in a transaction
        partitions.detach_and_drop(cursor, Month(2031, 2))
        # A detach interrupted after its first step leaves the partition "detach pending" (what a killed
        # process leaves behind): simulated by starting a concurrent detach and cancelling it at its wait.
        cursor.execute("UPDATE pg_inherits SET inhdetachpending = true WHERE inhrelid = "
                       "'streams_trade_2031_03'::regclass")
        partitions.detach_and_drop(cursor, Month(2031, 3))
    assert Month(2031, 2) not in months() and Month(2031, 3) not in months() and Month(2031, 4) in months()
    assert list(PriceUpdate.objects.order_by("trade_id").values_list("trade_id", flat=True)) == [3]
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('streams_trade_2031_02'), to_regclass('streams_trade_2031_03')")
        assert cursor.fetchone() == (None, None)  # dropped, not left behind detached


def test_two_writers_making_the_same_month_at_once_both_succeed() -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def make(trade_id: int) -> None:
        try:
            start.wait()
            store_trades([trade(trade_id, datetime(2019, 7, 4, tzinfo=UTC)),
                          trade(trade_id + 10, datetime(2019, 7, 5, tzinfo=UTC))])
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=make, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(PriceUpdate.objects.values_list("trade_id", flat=True)) == [1, 2, 11, 12]
    assert Month(2019, 7) in months()


def test_the_hourly_task_is_scheduled_and_runs_the_maintenance() -> None:
    # The data migration's function (the test database's own rows are flushed between transactional tests).
    import_module("streams.migrations.0003_partition_maintenance_task").create_task(django_apps, None)
    task = PeriodicTask.objects.get(name="maintain partitions")
    assert task.interval is not None
    assert (task.task, task.interval.every, task.interval.period, task.enabled) == (
        "workers.tasks.maintain_partitions", 3600, "seconds", True)
    this_month = Month.of(datetime.now(UTC))
    with connection.cursor() as cursor:  # as if nothing had been made ahead
        for month in sorted(partitions.existing(cursor)):
            if month.end <= this_month.next().next().end:
                partitions.detach_and_drop(cursor, month)
    assert this_month not in months()
    result = maintain_partitions()
    assert this_month.name in result["created"] and this_month.next().name in result["created"]
