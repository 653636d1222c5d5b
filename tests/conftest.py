"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.fake.exchange import FakeExchange, running_exchange


@pytest.fixture
def exchange() -> Iterator[FakeExchange]:
    with running_exchange(symbols={"BTCUSDT": 100.0, "ETHUSDT": 0.0}, seed=21) as ex:
        yield ex


@pytest.fixture
def clean_redis() -> Iterator[None]:
    """An empty Redis database 15 (the tests' own) before and after the test."""
    from workers.redis import sync_redis

    client = sync_redis()
    client.flushdb()
    yield
    client.flushdb()
