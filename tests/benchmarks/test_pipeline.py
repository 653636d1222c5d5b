"""The pipeline benchmarks run end to end, and what they measure is what they say: stream tasks hosted by the
runtime, the buffer flushed into the database, latencies from the exchange's event time."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.pipeline import bench_browser_latency, bench_latency, bench_throughput
from streams.models import PriceUpdate
from tests.workers.conftest import FAST

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
def fast(settings: Any, clean_redis: None) -> None:
    for name, value in FAST.items():
        setattr(settings, name, value)


def test_the_throughput_run_stores_every_trade_of_the_burst() -> None:
    result = bench_throughput(streams=2, per_stream=300)
    assert result.count == 600 and result.seconds > 0
    assert PriceUpdate.objects.count() == 600


def test_the_commit_latency_is_measured_from_the_exchanges_event_time() -> None:
    p50, p99 = bench_latency(rate=100.0, symbols=1, seconds=1.0)
    assert p50.unit == p99.unit == "ms"
    assert 0 <= p50.count <= p99.count < 5_000  # event times in µs read as ms made it -1.8e15


def test_the_browser_latency_is_measured_on_the_trades_frames() -> None:
    p50, p99 = bench_browser_latency(rate=100.0, symbols=1, seconds=1.0)
    assert p50.unit == p99.unit == "ms"
    assert 0 <= p50.count <= p99.count < 5_000
