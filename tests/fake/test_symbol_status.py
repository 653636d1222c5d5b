"""The fake exchange's symbol statuses: exchangeInfo says them (and filters on them), and only TRADING symbols trade.

Spec: rest-api.md "Exchange information" (`symbolStatus`: TRADING, HALT or BREAK, not with `symbol(s)`);
enums.md "Symbol status"; errors.md -1122 INVALID_SYMBOLSTATUS.
"""

from __future__ import annotations

import httpx
import pytest

from streams.fake.exchange import FakeExchange
from tests.fake import wait_until


async def test_exchange_info_shows_each_status_and_filters_on_it() -> None:
    async with (
        FakeExchange({"BTCUSDT": 0, "ETHUSDT": 0, "BNBUSDT": 0}) as ex,
        httpx.AsyncClient(base_url=ex.rest_url) as http,
    ):
        ex.set_status("ETHUSDT", "BREAK")
        ex.set_status("BNBUSDT", "HALT")
        every = (await http.get("/api/v3/exchangeInfo")).json()["symbols"]
        assert {s["symbol"]: s["status"] for s in every} == {"BTCUSDT": "TRADING", "ETHUSDT": "BREAK",
                                                             "BNBUSDT": "HALT"}
        named = (await http.get("/api/v3/exchangeInfo", params={"symbols": '["ETHUSDT"]'})).json()["symbols"]
        assert [(s["symbol"], s["status"]) for s in named] == [("ETHUSDT", "BREAK")]
        trading = (await http.get("/api/v3/exchangeInfo", params={"symbolStatus": "TRADING"})).json()["symbols"]
        assert [s["symbol"] for s in trading] == ["BTCUSDT"]
        on_break = (await http.get("/api/v3/exchangeInfo", params={"symbolStatus": "BREAK"}))
        assert [s["symbol"] for s in on_break.json()["symbols"]] == ["ETHUSDT"]
        assert on_break.headers["X-MBX-USED-WEIGHT-1M"] == "80"  # 20 a call, whatever the parameters


@pytest.mark.parametrize(("params", "code"), [
    ({"symbolStatus": "CLOSED"}, -1122),
    ({"symbolStatus": "TRADING", "symbol": "BTCUSDT"}, -1128),
    ({"symbolStatus": "TRADING", "symbols": '["BTCUSDT"]'}, -1128),
])
async def test_bad_symbol_status_filters_get_the_real_error_codes(params: dict[str, str], code: int) -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex, httpx.AsyncClient(base_url=ex.rest_url) as http:
        response = await http.get("/api/v3/exchangeInfo", params=params)
        assert response.status_code == 400 and response.json()["code"] == code


async def test_a_symbol_on_a_break_makes_no_trades_and_resumes_without_catching_up() -> None:
    async with FakeExchange({"BTCUSDT": 200.0, "ETHUSDT": 200.0}) as ex:
        await wait_until(lambda: ex.markets["ETHUSDT"].trades)
        ex.set_status("ETHUSDT", "BREAK")
        stopped_at = len(ex.markets["ETHUSDT"].trades)
        btc_at = len(ex.markets["BTCUSDT"].trades)
        await wait_until(lambda: len(ex.markets["BTCUSDT"].trades) >= btc_at + 100)  # half a second of market
        assert len(ex.markets["ETHUSDT"].trades) == stopped_at
        ex.set_status("ETHUSDT", "TRADING")
        await wait_until(lambda: len(ex.markets["ETHUSDT"].trades) > stopped_at)
        assert len(ex.markets["ETHUSDT"].trades) - stopped_at < 40  # one tick's worth, not the 100 missed


async def test_the_status_is_set_through_the_control_endpoint_and_checked() -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex, httpx.AsyncClient(base_url=ex.rest_url) as http:
        response = await http.post("/fake/status", json={"symbol": "btcusdt", "status": "HALT"})
        assert response.json() == {"symbol": "BTCUSDT", "status": "HALT"} and ex.statuses["BTCUSDT"] == "HALT"
        assert (await http.post("/fake/status", json={"symbol": "BTCUSDT", "status": "OPEN"})).status_code == 400
        assert (await http.post("/fake/status", json={"symbol": "XRPUSDT", "status": "BREAK"})).status_code == 400
        assert (await http.post("/fake/status", json={"status": "BREAK"})).status_code == 400
    with pytest.raises(ValueError, match="unknown symbol status 'PRE_TRADING'"):
        ex.set_status("BTCUSDT", "PRE_TRADING")  # removed from the API (CHANGELOG 2025-10-24, schema 3:0)
