"""The fake exchange's REST side: trade lookups against the record, errors, weights and the control API."""

from __future__ import annotations

import httpx
import pytest

from streams.binance.protocol import AGG_TRADE, TRADE, Trade, trade_from_rest
from streams.fake.exchange import FakeExchange
from streams.fake.faults import FaultRates
from tests.fake import wait_until


async def test_historical_trades_paginated_by_from_id_equal_the_record() -> None:
    async with FakeExchange({"BTCUSDT": 0}, seed=2) as ex, httpx.AsyncClient(base_url=ex.rest_url) as http:
        ex.make_trades("BTCUSDT", 2500)
        record = ex.record("BTCUSDT")
        got: list[Trade] = []
        from_id = record[0].trade_id
        while True:
            response = await http.get(
                "/api/v3/historicalTrades", params={"symbol": "BTCUSDT", "fromId": from_id, "limit": 1000}
            )
            assert response.status_code == 200
            rows = response.json()
            if not rows:
                break
            got += [trade_from_rest("BTCUSDT", TRADE, row) for row in rows]
            from_id = rows[-1]["id"] + 1
        assert [t._replace(event_ts=t.trade_ts) for t in record] == got
        assert len(got) == 2500
        recent = (await http.get("/api/v3/trades", params={"symbol": "BTCUSDT"})).json()
        assert len(recent) == 500 and recent[-1]["id"] == record[-1].trade_id
        assert set(recent[0]) == {"id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"}


async def test_agg_trades_by_from_id_and_by_time_equal_the_agg_record() -> None:
    async with FakeExchange({"BTCUSDT": 0}, seed=2) as ex, httpx.AsyncClient(base_url=ex.rest_url) as http:
        ex.make_trades("BTCUSDT", 1500)
        aggs = ex.agg_record("BTCUSDT")
        got: list[Trade] = []
        from_id = aggs[0].trade_id
        while rows := (
            await http.get("/api/v3/aggTrades", params={"symbol": "BTCUSDT", "fromId": from_id})
        ).json():
            got += [trade_from_rest("BTCUSDT", AGG_TRADE, row) for row in rows]
            from_id = rows[-1]["a"] + 1
        assert got == [a._replace(event_ts=a.trade_ts) for a in aggs]
        start = aggs[0].trade_ts
        rows = (
            await http.get(
                "/api/v3/aggTrades",
                params={"symbol": "BTCUSDT", "startTime": start, "endTime": start + 1000, "limit": 3},
            )
        ).json()
        assert [r["a"] for r in rows] == [a.trade_id for a in aggs[:3]]
        assert set(rows[0]) == {"a", "p", "q", "f", "l", "T", "m", "M"}


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/api/v3/historicalTrades", {}, 400, -1102),
        ("/api/v3/historicalTrades", {"symbol": "btcusdt"}, 400, -1100),
        ("/api/v3/historicalTrades", {"symbol": "XRPUSDT"}, 400, -1121),
        ("/api/v3/historicalTrades", {"symbol": "BTCUSDT", "fromId": "abc"}, 400, -1100),
        ("/api/v3/trades", {"symbol": "BTCUSDT", "limit": "1001"}, 400, -1130),
        ("/api/v3/aggTrades", {"symbol": "BTCUSDT", "fromId": "1", "startTime": "1"}, 400, -1128),
        ("/api/v3/aggTrades", {"symbol": "BTCUSDT", "startTime": "1", "endTime": "99999999"}, 400, -1127),
        ("/api/v3/exchangeInfo", {"symbol": "XRPUSDT"}, 400, -1121),
        ("/api/v3/exchangeInfo", {"symbols": '["BTCUSDT","XRPUSDT"]'}, 400, -1121),
        ("/api/v3/exchangeInfo", {"symbols": "BTCUSDT"}, 400, -1100),
    ],
)
async def test_bad_parameters_get_the_real_error_codes(
    path: str, params: dict[str, str], status: int, code: int
) -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex, httpx.AsyncClient(base_url=ex.rest_url) as http:
        response = await http.get(path, params=params)
        assert response.status_code == status
        assert response.json()["code"] == code and response.json()["msg"]
        assert "X-MBX-USED-WEIGHT-1M" in response.headers


async def test_exchange_info_lists_the_symbols_and_rate_limits() -> None:
    async with (
        FakeExchange({"BTCUSDT": 0, "ETHUSDT": 0}, weight_limit=1200) as ex,
        httpx.AsyncClient(base_url=ex.rest_url) as http,
    ):
        info = (await http.get("/api/v3/exchangeInfo", params={"symbols": '["ETHUSDT"]'})).json()
        assert [s["symbol"] for s in info["symbols"]] == ["ETHUSDT"]
        assert info["symbols"][0]["status"] == "TRADING" and info["symbols"][0]["baseAsset"] == "ETH"
        assert {
            "rateLimitType": "REQUEST_WEIGHT",
            "interval": "MINUTE",
            "intervalNum": 1,
            "limit": 1200,
        } in (info["rateLimits"])
        every = (await http.get("/api/v3/exchangeInfo")).json()
        assert [s["symbol"] for s in every["symbols"]] == ["BTCUSDT", "ETHUSDT"]


async def test_weight_is_reported_then_429_then_418_for_not_waiting() -> None:
    async with FakeExchange({"BTCUSDT": 0}, weight_limit=60, weight_window=30) as ex:
        async with httpx.AsyncClient(base_url=ex.rest_url) as http:
            params = {"symbol": "BTCUSDT"}
            first = await http.get("/api/v3/trades", params=params)
            assert first.headers["X-MBX-USED-WEIGHT-1M"] == "25"
            second = await http.get("/api/v3/trades", params=params)
            assert second.headers["X-MBX-USED-WEIGHT-1M"] == "50"
            limited = await http.get("/api/v3/trades", params=params)
            assert limited.status_code == 429 and limited.json()["code"] == -1003
            assert 1 <= int(limited.headers["Retry-After"]) <= 30
            agg = await http.get("/api/v3/aggTrades", params=params)  # asked again while told to wait
            assert agg.status_code == 418 and int(agg.headers["Retry-After"]) >= 30
            assert (await http.get("/api/v3/aggTrades", params=params)).status_code == 418
        assert (ex.stats.rest_429, ex.stats.rest_418) == (1, 2)
        assert ex.stats.rest_requests["/api/v3/trades"] == 3


async def test_control_endpoint_injects_faults_and_serves_the_record_and_stats() -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex, httpx.AsyncClient(base_url=ex.rest_url) as http:
        made = ex.make_trades("BTCUSDT", 5)
        rows = (await http.get("/fake/record", params={"symbol": "BTCUSDT", "channel": "trade"})).json()
        assert [Trade(**row) for row in rows] == made
        response = await http.post("/fake/faults", json={"kind": "rest_429", "count": 2})
        assert response.json() == {"affected": 0}
        for _ in range(2):
            limited = await http.get("/api/v3/trades", params={"symbol": "BTCUSDT"})
            assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
        assert (await http.get("/api/v3/trades", params={"symbol": "BTCUSDT"})).status_code == 200
        assert (await http.post("/fake/faults", json={"kind": "explode"})).status_code == 400
        stats = (await http.get("/fake/stats")).json()
        assert stats["rest_429"] == 2 and stats["rest_requests"]["/api/v3/trades"] == 3


async def test_rest_garbage_answers_200_with_an_html_page_then_json_again() -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex, httpx.AsyncClient(base_url=ex.rest_url) as http:
        made = ex.make_trades("BTCUSDT", 5)
        assert ex.inject("rest_garbage", count=2) == 0
        assert (await http.get("/fake/stats")).json()["rest_garbage"] == 0  # control endpoints are not hit
        assert (await http.get("/api/v3/nowhere")).status_code == 404  # nor unknown paths
        for path, params in (("/api/v3/trades", {"symbol": "BTCUSDT"}), ("/api/v3/exchangeInfo", {})):
            response = await http.get(path, params=params)
            assert response.status_code == 200
            assert response.headers["Content-Type"] == "text/html"
            assert response.text.startswith("<html>") and "502 Bad Gateway" in response.text
            assert "X-MBX-USED-WEIGHT-1M" not in response.headers  # a proxy answered, not the exchange
            with pytest.raises(ValueError):  # json.JSONDecodeError
                response.json()
        response = await http.get("/api/v3/historicalTrades", params={"symbol": "BTCUSDT", "fromId": 0})
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
        assert [row["id"] for row in response.json()] == [t.trade_id for t in made]
        assert response.headers["X-MBX-USED-WEIGHT-1M"] == "25"  # the garbage answers used no weight
        stats = ex.stats
        assert (stats.rest_garbage, stats.faults["rest_garbage"]) == (2, 1)


async def test_rest_garbage_through_the_control_endpoint_defaults_to_one_answer() -> None:
    async with FakeExchange({"BTCUSDT": 0}) as ex, httpx.AsyncClient(base_url=ex.rest_url) as http:
        response = await http.post("/fake/faults", json={"kind": "rest_garbage"})
        assert response.status_code == 200 and response.json() == {"affected": 0}
        params = {"symbol": "BTCUSDT"}
        assert (await http.get("/api/v3/aggTrades", params=params)).headers["Content-Type"] == "text/html"
        assert (await http.get("/api/v3/aggTrades", params=params)).json() == []
        bad = await http.post("/fake/faults", json={"kind": "rest_garbage", "count": 0})
        assert bad.status_code == 400 and "count 0" in bad.json()["error"]
        bad = await http.post("/fake/faults", json={"kind": "replay", "symbol": "BTCUSDT", "colour": "red"})
        assert bad.status_code == 400 and "colour" in bad.json()["error"]
        stats = (await http.get("/fake/stats")).json()
        assert stats["rest_garbage"] == 1 and stats["faults"] == {"rest_garbage": 1}


async def test_random_rest_garbage_replaces_the_next_answer() -> None:
    async with (
        FakeExchange({"BTCUSDT": 0}, faults=FaultRates(rest_garbage=5.0)) as ex,
        httpx.AsyncClient(base_url=ex.rest_url) as http,
    ):
        await wait_until(lambda: ex.stats.faults["rest_garbage"] >= 1)
        response = await http.get("/api/v3/trades", params={"symbol": "BTCUSDT"})
        assert response.status_code == 200 and response.headers["Content-Type"] == "text/html"
        assert ex.stats.rest_garbage == 1
