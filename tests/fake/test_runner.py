"""The thread runner: a fake exchange for synchronous code (Django views, Celery tasks)."""

from __future__ import annotations

import time

import httpx
from websockets.sync.client import connect

from streams.binance.protocol import parse_frame
from streams.fake.exchange import running_exchange


def test_a_background_exchange_serves_a_synchronous_client() -> None:
    with running_exchange(symbols={"BTCUSDT": 0}, seed=5) as ex:
        with connect(f"{ex.ws_url}/ws/btcusdt@trade") as ws:
            deadline = time.monotonic() + 2
            while ex.active_connections("btcusdt@trade") != 1:
                assert time.monotonic() < deadline, "the connection never registered"
                time.sleep(0.005)
            made = ex.make_trades("BTCUSDT", 3)
            assert [parse_frame(ws.recv(timeout=2)) for _ in made] == made
            assert ex.inject("drop", symbol="BTCUSDT") == 1
        response = httpx.get(f"{ex.rest_url}/api/v3/trades", params={"symbol": "BTCUSDT"})
        assert [row["id"] for row in response.json()] == [t.trade_id for t in made]
        assert ex.record("BTCUSDT") == made
        assert ex.stats.rest_requests["/api/v3/trades"] == 1
