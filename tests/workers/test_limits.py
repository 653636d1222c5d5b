"""The shared connection budget and a database outage, with real workers."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.conf import settings

from streams.binance.protocol import TRADE
from streams.fake.exchange import running_exchange
from streams.fake.proxy import tcp_proxy
from tests.helpers import wait_for
from tests.workers.conftest import Beat
from tests.workers.test_supervision import assert_stored_run_equals_record, stored_ids
from tests.workers.test_worker_processes import celery_worker, drained
from workers.keys import stream_id
from workers.registry import enable_stream
from workers.status import read_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "SOLUSDT"]


def test_many_streams_starting_at_once_stay_within_the_connection_budget(
        fast_settings: Any, celery_worker_threads: Any) -> None:
    fast_settings.COLLECTOR_CONNECTION_BUDGET = 3
    fast_settings.COLLECTOR_CONNECTION_WINDOW = 60.0
    fast_settings.BINANCE_STREAMS_PER_CONNECTION = 1  # a connection each: the budget is what holds them back
    with running_exchange(symbols=dict.fromkeys(SYMBOLS, 5.0), seed=51) as ex:
        fast_settings.BINANCE_WS_URL, fast_settings.BINANCE_REST_URL = ex.ws_url, ex.rest_url
        for symbol in SYMBOLS:
            enable_stream(symbol, TRADE)
        with Beat():
            wait_for(lambda: ex.stats.connection_attempts >= 3, timeout=30)
            wait_for(lambda: len([s for s in SYMBOLS if getattr(read_status(stream_id(s, TRADE)), "state", None)
                                  == "waiting for connection budget"]) == 3, timeout=30)
            pause = threading.Event()
            for _ in range(20):  # for 2 s of supervision passes, restarts included: still 3 attempts
                assert ex.stats.connection_attempts == 3
                pause.wait(0.1)


def test_the_database_away_for_30_seconds_loses_no_trade(fast_settings: Any, clean_redis: None) -> None:
    host, port = settings.DATABASES["default"]["HOST"], int(settings.DATABASES["default"]["PORT"])
    with running_exchange(symbols={"BTCUSDT": 60.0}, seed=52) as ex, tcp_proxy(host, port) as proxy:
        fast_settings.BINANCE_WS_URL, fast_settings.BINANCE_REST_URL = ex.ws_url, ex.rest_url
        enable_stream("BTCUSDT", TRADE)
        url = f"postgres://{settings.DATABASES['default']['USER']}@127.0.0.1:{proxy.port}/" \
              f"{settings.DATABASES['default']['NAME']}"
        with Beat(), celery_worker(ex, "outage", DATABASE_URL=url, DATABASE_CONN_MAX_AGE="0"):
            wait_for(lambda: len(stored_ids("BTCUSDT")) >= 100, timeout=60)
            proxy.cut()
            cut_at = len(stored_ids("BTCUSDT"))
            outage = threading.Event()
            outage.wait(30)  # the outage itself is the subject: 30 s without a database
            assert len(stored_ids("BTCUSDT")) == cut_at
            proxy.restore()
            restored_at = ex.record("BTCUSDT")[-1].trade_id
            wait_for(lambda: stored_ids("BTCUSDT")[-1] > restored_at + 60, timeout=60)
            wait_for(drained, timeout=30)
        assert_stored_run_equals_record(ex, "BTCUSDT", cut_at + 1800)
