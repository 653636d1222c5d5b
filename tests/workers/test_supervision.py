"""Streams under Celery: enabled in the periodic-task model, run by a real worker, stored exactly once."""

from __future__ import annotations

from typing import Any

import pytest

from streams.binance.protocol import TRADE, Trade
from streams.fake.exchange import FakeExchange, running_exchange
from streams.fake.market import micros
from streams.models import PriceUpdate
from tests.helpers import wait_for
from tests.workers.conftest import Beat
from workers.buffer import buffer_stats
from workers.keys import lease_key, stream_id
from workers.redis import sync_redis
from workers.registry import disable_stream, enable_stream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def stored_ids(symbol: str) -> list[int]:
    return list(PriceUpdate.objects.filter(ticker_symbol=symbol, channel=TRADE)
                .order_by("trade_id").values_list("trade_id", flat=True))


def in_micros(trade: Trade) -> Trade:
    """The record's trade as the collector gets it: the streams and REST in microseconds."""
    return trade._replace(trade_ts=micros(trade.trade_ts), event_ts=micros(trade.event_ts))


def assert_stored_run_equals_record(exchange: FakeExchange, symbol: str, at_least: int) -> None:
    rows = list(PriceUpdate.objects.filter(ticker_symbol=symbol, channel=TRADE).order_by("trade_id"))
    ids = [row.trade_id for row in rows]
    assert len(ids) >= at_least
    assert ids == list(range(ids[0], ids[0] + len(ids))), f"{symbol}: a gap or a duplicate"
    record = {t.trade_id: t for t in exchange.record(symbol)}
    for row in rows:
        made = record[row.trade_id]
        assert (row.price, row.volume, row.trade_time, row.is_market_maker) == (
            made.price, made.quantity, in_micros(made).trade_time, made.is_buyer_maker)


def point_at(settings: Any, exchange: FakeExchange) -> None:
    settings.BINANCE_WS_URL = exchange.ws_url
    settings.BINANCE_REST_URL = exchange.rest_url


def test_two_enabled_symbols_run_as_two_streams_and_store_the_record(
        fast_settings: Any, celery_worker_threads: Any) -> None:
    with running_exchange(symbols={"BTCUSDT": 60.0, "ETHUSDT": 40.0}, seed=31) as ex:
        point_at(fast_settings, ex)
        enable_stream("BTCUSDT", TRADE)
        enable_stream("ETHUSDT", TRADE)
        with Beat():
            wait_for(lambda: len(stored_ids("BTCUSDT")) >= 150 and len(stored_ids("ETHUSDT")) >= 100, timeout=60)
            assert ex.active_connections("btcusdt@trade") == 1 and ex.active_connections("ethusdt@trade") == 1
            disable_stream("BTCUSDT", TRADE)
            disable_stream("ETHUSDT", TRADE)
            # Disabling closes the connections within the bound (a supervise pass + a heartbeat).
            wait_for(lambda: ex.active_connections() == 0, timeout=30)
            wait_for(lambda: not sync_redis().exists(lease_key(stream_id("BTCUSDT", TRADE))), timeout=30)
            wait_for(_buffer_drained, timeout=30)
        assert_stored_run_equals_record(ex, "BTCUSDT", 150)
        assert_stored_run_equals_record(ex, "ETHUSDT", 100)
        assert ex.stats.connections_opened["btcusdt@trade"] == 1


def _buffer_drained() -> bool:
    stats = buffer_stats(sync_redis())
    return bool(stats["length"] == 0 and stats["trades_waiting"] == 0)
