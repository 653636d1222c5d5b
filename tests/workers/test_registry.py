"""workers.registry: symbol streams as django-celery-beat periodic tasks, and symbol validation."""

from __future__ import annotations

import importlib
import json
from datetime import datetime, timedelta

import pytest
from django.apps import apps
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks
from pytest_django import DjangoAssertNumQueries, Settings

from streams.binance.errors import ExchangeUnavailable, InvalidStreamName, UnknownSymbol
from streams.binance.streamid import stream_id
from streams.fake.exchange import FakeExchange
from workers import registry

pytestmark = pytest.mark.django_db


@pytest.fixture
def exchange_settings(settings: Settings, exchange: FakeExchange) -> FakeExchange:
    settings.BINANCE_REST_URL = exchange.rest_url
    return exchange


def schedule_of(task: PeriodicTask) -> tuple[int, str]:
    """(every, period) of the task's interval schedule."""
    assert task.interval is not None, task.name
    return task.interval.every, task.interval.period


def seconds_since_tick(task: PeriodicTask, now: datetime) -> float:
    assert task.last_run_at is not None, task.name
    return (now - task.last_run_at).total_seconds()


def test_enable_creates_the_periodic_task_of_the_stream() -> None:
    task = registry.enable_stream("btcusdt", "TRADE")
    task.refresh_from_db()
    assert task.name == "stream btcusdt@trade"
    assert task.task == "workers.tasks.ensure_stream"
    assert json.loads(task.kwargs) == {"symbol": "BTCUSDT", "channel": "trade"}
    assert schedule_of(task) == (3600, IntervalSchedule.SECONDS)
    assert task.enabled


def test_enabling_twice_keeps_one_task_and_one_shared_schedule() -> None:
    first = registry.enable_stream("BTCUSDT", "trade")
    second = registry.enable_stream("BTCUSDT", "trade")
    other = registry.enable_stream("ETHUSDT", "aggTrade")
    assert first.pk == second.pk
    assert registry.stream_tasks().count() == 2
    assert other.interval_id == first.interval_id


def test_disable_clears_the_enabled_flag_and_enable_sets_it_again() -> None:
    registry.enable_stream("BTCUSDT", "trade")
    assert registry.disable_stream("BTCUSDT", "trade") is True
    assert PeriodicTask.objects.get(name="stream btcusdt@trade").enabled is False
    assert registry.disable_stream("BTCUSDT", "trade") is False  # already disabled
    registry.enable_stream("BTCUSDT", "trade")
    assert PeriodicTask.objects.get(name="stream btcusdt@trade").enabled is True


def test_disabling_an_unknown_stream_answers_false() -> None:
    assert registry.disable_stream("BTCUSDT", "trade") is False


def test_changes_tell_beat_that_the_schedule_changed() -> None:
    registry.enable_stream("BTCUSDT", "trade")
    before = PeriodicTasks.last_change()
    registry.disable_stream("BTCUSDT", "trade")
    assert PeriodicTasks.last_change() > before


def test_enabled_streams_lists_only_the_enabled_ones() -> None:
    registry.enable_stream("BTCUSDT", "trade")
    registry.enable_stream("BTCUSDT", "aggTrade")
    registry.enable_stream("ETHUSDT", "trade")
    registry.disable_stream("BTCUSDT", "aggTrade")
    assert sorted(registry.enabled_streams()) == [stream_id("BTCUSDT", "trade"), stream_id("ETHUSDT", "trade")]


def test_enabled_streams_skips_a_task_with_broken_kwargs(caplog: pytest.LogCaptureFixture) -> None:
    registry.enable_stream("BTCUSDT", "trade")
    broken = registry.enable_stream("ETHUSDT", "trade")
    broken.kwargs = '{"symbol": "ETHUSDT"}'
    broken.save()
    assert registry.enabled_streams() == [stream_id("BTCUSDT", "trade")]
    assert "stream ethusdt@trade" in caplog.text


def test_stream_tasks_leaves_out_the_collectors_own_tasks() -> None:
    registry.enable_stream("BTCUSDT", "trade")
    assert [t.name for t in registry.stream_tasks()] == ["stream btcusdt@trade"]
    assert PeriodicTask.objects.filter(name="flush trades").exists()


def test_a_bad_channel_is_refused_with_its_name() -> None:
    with pytest.raises(InvalidStreamName, match="invalid channel 'depth'"):
        registry.enable_stream("BTCUSDT", "depth")
    assert not registry.stream_tasks().exists()


def test_a_malformed_symbol_is_refused_with_its_name() -> None:
    with pytest.raises(InvalidStreamName, match="invalid symbol 'BTC-USDT'"):
        registry.enable_stream("BTC-USDT", "trade")
    assert not registry.stream_tasks().exists()


def test_validate_returns_the_normalized_symbol_of_a_listed_one(exchange_settings: FakeExchange) -> None:
    assert registry.validate_symbol("ethusdt") == "ETHUSDT"


def test_validate_names_an_unknown_symbol(exchange_settings: FakeExchange) -> None:
    with pytest.raises(UnknownSymbol, match="DOGEUSDT") as caught:
        registry.validate_symbol("dogeusdt")
    assert caught.value.symbol == "DOGEUSDT"


def test_enable_with_validation_creates_nothing_for_an_unknown_symbol(exchange_settings: FakeExchange) -> None:
    with pytest.raises(UnknownSymbol, match="DOGEUSDT"):
        registry.enable_stream("DOGEUSDT", "trade", validate=True)
    assert not registry.stream_tasks().exists()


def test_enable_with_validation_creates_a_listed_symbol(exchange_settings: FakeExchange) -> None:
    registry.enable_stream("btcusdt", "aggTrade", validate=True)
    assert registry.enabled_streams() == [stream_id("BTCUSDT", "aggTrade")]


def test_validate_says_when_the_exchange_cannot_be_reached(settings: Settings) -> None:
    settings.BINANCE_REST_URL = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(ExchangeUnavailable, match="cannot reach"):
        registry.validate_symbol("BTCUSDT")


def test_the_collector_tasks_exist_after_the_migrations() -> None:
    tasks = {t.name: t for t in PeriodicTask.objects.filter(
        name__in=["flush trades", "supervise streams", "audit gaps"])}
    assert {name: (t.task, *schedule_of(t), t.enabled) for name, t in tasks.items()} == {
        "flush trades": ("workers.tasks.flush_trades", 1, "seconds", True),
        "supervise streams": ("workers.tasks.supervise_streams", 10, "seconds", True),
        "audit gaps": ("workers.tasks.audit_gaps", 300, "seconds", True),
    }
    listing_check = PeriodicTask.objects.get(name="check listing")
    assert (listing_check.task, schedule_of(listing_check)[0]) == ("workers.tasks.check_listing", 300)


# --- in bulk --------------------------------------------------------------------------------------------------

MANY = [stream_id(f"B{i:04d}USDT", "trade") for i in range(1500)]


def test_enabling_1500_streams_is_a_few_statements_and_one_notice_to_beat(
        django_assert_max_num_queries: DjangoAssertNumQueries) -> None:
    before = PeriodicTasks.last_change()
    with django_assert_max_num_queries(12):  # schedule, locked read, 3 INSERTs of 500, the notice, savepoints
        changes = registry.enable_streams(MANY)
    assert len(changes.done) == 1500 and changes.already == []
    assert registry.stream_tasks().filter(enabled=True).count() == 1500
    assert PeriodicTasks.last_change() > before
    assert len(registry.enabled_streams()) == 1500


def test_enabling_again_writes_nothing_and_says_so() -> None:
    registry.enable_streams(MANY[:10])
    before = PeriodicTasks.last_change()
    changes = registry.enable_streams(MANY[:12])
    assert len(changes.done) == 2 and len(changes.already) == 10
    again = registry.enable_streams(MANY[:12])
    assert again.done == [] and len(again.already) == 12
    assert PeriodicTasks.last_change() > before  # the first of the two changed something; the second did not
    last = PeriodicTasks.last_change()
    registry.enable_streams(MANY[:12])
    assert PeriodicTasks.last_change() == last


def test_the_ticks_of_streams_enabled_together_are_spread_over_the_interval() -> None:
    registry.enable_streams(MANY[:300])
    now = timezone.now()
    offsets = [seconds_since_tick(t, now) for t in registry.stream_tasks()]
    assert all(-1 < o < registry.ENSURE_EVERY + 1 for o in offsets)
    # Beat ticks each one interval after its last_run_at: about 300 / 12 in each 5-minute slice of the hour.
    slices = [sum(1 for o in offsets if k * 300 <= o < (k + 1) * 300) for k in range(12)]
    assert min(slices) >= 10, slices


def test_disabling_in_bulk_and_enabling_again() -> None:
    registry.enable_streams([*MANY[:5], stream_id("B0000USDT", "aggTrade")])
    before = PeriodicTasks.last_change()
    changes = registry.disable_streams([*MANY[:3], stream_id("ZZZZUSDT", "trade")])
    assert changes.done == ["b0000usdt@trade", "b0001usdt@trade", "b0002usdt@trade"] and changes.already == []
    assert PeriodicTasks.last_change() > before
    disabled = PeriodicTask.objects.get(name="stream b0000usdt@trade")
    assert not disabled.enabled and disabled.last_run_at is None  # as PeriodicTask.save() leaves a disabled one
    assert registry.disable_streams(MANY[:3]).already == ["b0000usdt@trade", "b0001usdt@trade", "b0002usdt@trade"]
    changes = registry.enable_streams(MANY[:5])
    assert changes.done == ["b0000usdt@trade", "b0001usdt@trade", "b0002usdt@trade"] and len(changes.already) == 2
    assert PeriodicTask.objects.get(name="stream b0000usdt@trade").last_run_at is not None


def test_disable_all_takes_every_stream_or_those_of_a_channel() -> None:
    registry.enable_streams([*MANY[:4], stream_id("B0000USDT", "aggTrade"), stream_id("B0001USDT", "aggTrade")])
    assert sorted(registry.disable_all(["aggtrade"]).done) == ["b0000usdt@aggTrade", "b0001usdt@aggTrade"]
    assert len(registry.enabled_streams()) == 4
    changes = registry.disable_all()
    assert len(changes.done) == 4 and len(changes.already) == 2
    assert registry.enabled_streams() == []
    assert PeriodicTask.objects.filter(name="flush trades", enabled=True).exists()  # not a stream: untouched


def test_a_bulk_enable_with_one_bad_symbol_writes_nothing() -> None:
    with pytest.raises(InvalidStreamName, match="BTC-USDT"):
        registry.enable_streams([stream_id("BTCUSDT", "trade"), stream_id("BTC-USDT", "trade")])
    assert not registry.stream_tasks().exists()


def test_the_summary_line() -> None:
    changes = registry.Changes(done=[f"s{i}@trade" for i in range(1487)], already=["x"] * 12)
    assert registry.summary("enabled", changes, {f"S{i}": "BREAK" for i in range(13)}).startswith(
        "enabled 1,487 streams (12 already enabled); 13 symbols not trading skipped: S0 (BREAK), S1 (BREAK)")
    assert registry.summary("enabled", registry.Changes(done=["btcusdt@trade"])) == "enabled btcusdt@trade"
    assert registry.summary("disabled", registry.Changes(already=["btcusdt@trade"])) == (
        "btcusdt@trade was already disabled")


# --- migration 0005: existing stream tasks tick hourly ------------------------------------------------------

def test_the_migration_moves_existing_stream_tasks_to_the_hourly_schedule_once() -> None:
    migration = importlib.import_module("workers.migrations.0005_stream_ticks_hourly")
    assert migration.EVERY == registry.ENSURE_EVERY
    old = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    registry.enable_streams(MANY[:50])
    registry.disable_streams(MANY[:5])
    registry.stream_tasks().update(interval=old, last_run_at=timezone.now() - timedelta(seconds=3))
    before = PeriodicTasks.last_change()
    editor = connection.schema_editor()
    migration.hourly(apps, editor)
    tasks = list(registry.stream_tasks())
    assert {schedule_of(t)[0] for t in tasks} == {3600}
    assert PeriodicTasks.last_change() > before
    spread = {int(seconds_since_tick(t, timezone.now())) // 600 for t in tasks if t.enabled}
    assert len(spread) >= 4  # the enabled ones no longer tick in the same second
    last = PeriodicTasks.last_change()
    migration.hourly(apps, editor)  # again: nothing to move, nothing said to beat
    assert PeriodicTasks.last_change() == last
    migration.every_ten_seconds(apps, editor)  # and back
    assert {schedule_of(t)[0] for t in registry.stream_tasks()} == {10}
