"""A chaos run: several symbols, a few hundred trades/s, random faults, lifetime cut-offs, a worker restart.

The database must end equal to the exchange's record, exactly. CHAOS_SECONDS sets the length (default 60).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from streams.binance.protocol import TRADE
from streams.fake.exchange import running_exchange
from streams.fake.faults import FaultRates
from tests.helpers import wait_for
from tests.workers.conftest import Beat
from tests.workers.test_supervision import assert_stored_run_equals_record, stored_ids
from tests.workers.test_worker_processes import celery_worker, drained
from workers.registry import disable_stream, enable_stream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SYMBOLS = {"BTCUSDT": 90.0, "ETHUSDT": 80.0, "BNBUSDT": 70.0, "SOLUSDT": 60.0}  # 300 trades/s in all
# Per connection: the four streams share two connections (two each), so the rates are per pair.
FAULTS = FaultRates(drop=0.08, stall=0.04, garbage=1.0, shutdown=0.02, replay=0.02)
SHARED_AND_ROTATING = {"BINANCE_ROTATE_AFTER": "12", "BINANCE_STREAMS_PER_CONNECTION": "2"}


def test_a_minute_of_chaos_leaves_the_database_equal_to_the_record(fast_settings: Any, clean_redis: None,
                                                                  tmp_path: Path) -> None:
    seconds = float(os.environ.get("CHAOS_SECONDS", "60"))
    clock = threading.Event()
    with running_exchange(symbols=SYMBOLS, seed=61, faults=FAULTS, max_lifetime=15.0) as ex:
        fast_settings.BINANCE_WS_URL, fast_settings.BINANCE_REST_URL = ex.ws_url, ex.rest_url
        for symbol in SYMBOLS:
            enable_stream(symbol, TRADE)
        with Beat():
            # Rotation before the 15 s lifetime on one worker; drops, stalls, garbage, shutdown notices throughout.
            with celery_worker(ex, "first", log=tmp_path / "first.log", env=SHARED_AND_ROTATING) as first:
                wait_for(lambda: all(len(stored_ids(s)) >= 50 for s in SYMBOLS), timeout=60)
                clock.wait(seconds / 2)
                first.send_signal(signal.SIGTERM)  # the worker restart
                first.wait(timeout=30)
            with celery_worker(ex, "second", log=tmp_path / "second.log", env=SHARED_AND_ROTATING):
                clock.wait(seconds / 2)
                for symbol in SYMBOLS:
                    disable_stream(symbol, TRADE)
                wait_for(lambda: ex.active_connections() == 0, timeout=30)
                wait_for(drained, timeout=60)
        faults = dict(ex.stats.faults)
        disconnects = dict(ex.stats.disconnects)
        for symbol, rate in SYMBOLS.items():
            assert_stored_run_equals_record(ex, symbol, int(rate * seconds * 0.6))
    assert faults.get("drop", 0) + faults.get("stall", 0) >= 2, faults
    assert faults.get("garbage", 0) >= 5, faults
    assert disconnects, disconnects
