"""workers.registry: symbol streams as django-celery-beat periodic tasks, and symbol validation."""

from __future__ import annotations

import json

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from streams.binance.errors import ExchangeUnavailable, InvalidStreamName, UnknownSymbol
from streams.fake.exchange import FakeExchange
from workers import registry

pytestmark = pytest.mark.django_db


@pytest.fixture
def exchange_settings(settings, exchange: FakeExchange) -> FakeExchange:
    settings.BINANCE_REST_URL = exchange.rest_url
    return exchange


def test_enable_creates_the_periodic_task_of_the_stream() -> None:
    task = registry.enable_stream("btcusdt", "TRADE")
    task.refresh_from_db()
    assert task.name == "stream btcusdt@trade"
    assert task.task == "workers.tasks.ensure_stream"
    assert json.loads(task.kwargs) == {"symbol": "BTCUSDT", "channel": "trade"}
    assert (task.interval.every, task.interval.period) == (10, IntervalSchedule.SECONDS)
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
    assert sorted(registry.enabled_streams()) == [("BTCUSDT", "trade"), ("ETHUSDT", "trade")]


def test_enabled_streams_skips_a_task_with_broken_kwargs(caplog: pytest.LogCaptureFixture) -> None:
    registry.enable_stream("BTCUSDT", "trade")
    broken = registry.enable_stream("ETHUSDT", "trade")
    broken.kwargs = '{"symbol": "ETHUSDT"}'
    broken.save()
    assert registry.enabled_streams() == [("BTCUSDT", "trade")]
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
    assert registry.enabled_streams() == [("BTCUSDT", "aggTrade")]


def test_validate_says_when_the_exchange_cannot_be_reached(settings) -> None:
    settings.BINANCE_REST_URL = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(ExchangeUnavailable, match="cannot reach"):
        registry.validate_symbol("BTCUSDT")


def test_the_collector_tasks_exist_after_the_migrations() -> None:
    tasks = {t.name: t for t in PeriodicTask.objects.filter(
        name__in=["flush trades", "supervise streams", "audit gaps"])}
    assert {name: (t.task, t.interval.every, t.interval.period, t.enabled) for name, t in tasks.items()} == {
        "flush trades": ("workers.tasks.flush_trades", 1, "seconds", True),
        "supervise streams": ("workers.tasks.supervise_streams", 10, "seconds", True),
        "audit gaps": ("workers.tasks.audit_gaps", 300, "seconds", True),
    }
