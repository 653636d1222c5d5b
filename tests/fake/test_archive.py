"""The fake exchange's archive: data.binance.vision's layout and format, built from the record it shares with
historicalTrades and the streams, and the archive's faults."""

from __future__ import annotations

import hashlib
import io
import zipfile
from datetime import UTC, date, datetime, timedelta

import httpx

from streams.binance.protocol import TRADE, trade_from_rest
from streams.fake.exchange import FakeExchange
from streams.fake.market import Market, micros, quote_quantity

TODAY = datetime.now(UTC).date()
START = TODAY - timedelta(days=5)


def _day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000


def _daily(symbol: str, day: date) -> str:
    return f"/data/spot/daily/trades/{symbol}/{symbol}-trades-{day}.zip"


def _member(data: bytes) -> tuple[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        (name,) = archive.namelist()
        return name, archive.read(name)


async def test_a_daily_file_is_the_days_record_as_csv_with_its_checksum() -> None:
    async with FakeExchange({"BTCUSDT": 0.0}, seed=5, history_from=START, history_rate=0.02) as ex, \
            httpx.AsyncClient(base_url=ex.rest_url) as http:
        day = TODAY - timedelta(days=2)
        zipped = await http.get(_daily("BTCUSDT", day))
        checksum = await http.get(_daily("BTCUSDT", day) + ".CHECKSUM")
        assert zipped.status_code == 200 and checksum.status_code == 200
        assert checksum.text == f"{hashlib.sha256(zipped.content).hexdigest()}  BTCUSDT-trades-{day}.zip\n"
        name, csv = _member(zipped.content)
        assert name == f"BTCUSDT-trades-{day}.csv"
        expected = [t for t in ex.record("BTCUSDT") if _day_ms(day) <= t.trade_ts < _day_ms(day + timedelta(days=1))]
        assert len(expected) > 1000  # 0.02 trades/s over a day
        lines = csv.decode().splitlines()
        assert lines == [f"{t.trade_id},{t.price_text},{t.quantity_text},{quote_quantity(t)},{micros(t.trade_ts)},"
                         f"{t.is_buyer_maker},True" for t in expected]  # no header; µs since 2025; True/False


async def test_the_archive_the_rest_api_and_the_record_agree_on_ids_and_values() -> None:
    async with FakeExchange({"BTCUSDT": 0.0}, seed=6, history_from=START, history_rate=0.01) as ex, \
            httpx.AsyncClient(base_url=ex.rest_url) as http:
        ex.make_trades("BTCUSDT", 5)  # live trades continue the history's ids
        record = ex.record("BTCUSDT")
        assert [t.trade_id for t in record] == list(range(record[0].trade_id, record[0].trade_id + len(record)))
        assert record[0].trade_ts >= _day_ms(START) and record[-6].trade_ts < record[-1].trade_ts
        day = TODAY - timedelta(days=1)
        _, csv = _member((await http.get(_daily("BTCUSDT", day))).content)
        first = csv.decode().splitlines()[0].split(",")
        rows = (await http.get("/api/v3/historicalTrades", params={"symbol": "BTCUSDT", "fromId": first[0],
                                                                    "limit": 1},
                               headers={"X-MBX-TIME-UNIT": "MICROSECOND"})).json()
        rest = trade_from_rest("BTCUSDT", TRADE, rows[0])
        assert [str(rest.trade_id), rest.price_text, rest.quantity_text, rows[0]["quoteQty"], str(rest.trade_ts),
                str(rest.is_buyer_maker)] == first[:6]


async def test_files_appear_once_their_period_is_over_and_not_before_the_symbol_traded() -> None:
    async with FakeExchange({"BTCUSDT": 0.0}, seed=7, history_from=START, history_rate=0.001) as ex, \
            httpx.AsyncClient(base_url=ex.rest_url) as http:
        missing = [
            _daily("BTCUSDT", TODAY),  # today is not over
            _daily("BTCUSDT", START - timedelta(days=1)),  # before the symbol traded
            f"/data/spot/monthly/trades/BTCUSDT/BTCUSDT-trades-{TODAY:%Y-%m}.zip",  # this month is not over
            _daily("ETHUSDT", START),  # no such market
            "/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2026-13-01.zip",
        ]
        for path in missing:
            answer = await http.get(path)
            assert answer.status_code == 404 and b"<Code>NoSuchKey</Code>" in answer.content, path
        assert (await http.get(_daily("BTCUSDT", START))).status_code == 200
        month = START.replace(day=1)  # a month before this one is over and published; this one is not
        answer = await http.get(f"/data/spot/monthly/trades/BTCUSDT/BTCUSDT-trades-{month:%Y-%m}.zip")
        assert answer.status_code == (200 if month < TODAY.replace(day=1) else 404)


async def test_times_are_milliseconds_before_2025_and_microseconds_from_then_on() -> None:
    async with FakeExchange({"BTCUSDT": 0.0}, seed=8, history_from=date(2024, 12, 31), history_rate=0.0005) as ex, \
            httpx.AsyncClient(base_url=ex.rest_url) as http:
        old = _member((await http.get(_daily("BTCUSDT", date(2024, 12, 31)))).content)[1].decode().splitlines()
        new = _member((await http.get(_daily("BTCUSDT", date(2025, 1, 1)))).content)[1].decode().splitlines()
        assert old and new
        assert all(len(line.split(",")[4]) == 13 for line in old)  # 1735603200000: milliseconds
        assert all(len(line.split(",")[4]) == 16 for line in new)  # 1735689600000000: microseconds
        assert ex.archive.requests == 2


async def test_faults_withhold_corrupt_drop_and_republish_a_file() -> None:
    async with FakeExchange({"BTCUSDT": 0.0}, seed=9, history_from=START, history_rate=0.01) as ex, \
            httpx.AsyncClient(base_url=ex.rest_url) as http:
        day = TODAY - timedelta(days=3)
        path = _daily("BTCUSDT", day)
        original = (await http.get(path)).content
        ex.archive.withhold("BTCUSDT", str(day))
        assert (await http.get(path)).status_code == 404
        assert (await http.get(path + ".CHECKSUM")).status_code == 404
        control = await http.post("/fake/archive", json={"action": "publish", "symbol": "btcusdt", "period": str(day)})
        assert control.status_code == 200 and (await http.get(path)).content == original

        ex.archive.corrupt("BTCUSDT", str(day))
        digest = (await http.get(path + ".CHECKSUM")).text.split()[0]
        assert digest != hashlib.sha256((await http.get(path)).content).hexdigest()

        ex.archive.drop_trades("BTCUSDT", str(day), 7)
        holed = _member((await http.get(path)).content)[1].splitlines()
        assert len(holed) == len(_member(original)[1].splitlines()) - 7

        ex.archive.republish("BTCUSDT", str(day))
        again = (await http.get(path)).content
        assert again != original and _member(again)[1] == _member(original)[1]  # new bytes, same trades
        assert (await http.get(path + ".CHECKSUM")).text.split()[0] == hashlib.sha256(again).hexdigest()
        bad = await http.post("/fake/archive", json={"action": "explode", "symbol": "BTCUSDT", "period": str(day)})
        assert bad.status_code == 400 and "explode" in bad.json()["error"]


def test_a_past_days_trades_do_not_depend_on_when_the_history_ends() -> None:
    start = _day_ms(date(2026, 1, 1))
    short, long = Market("BTCUSDT", 3), Market("BTCUSDT", 3)
    short.make_history(start, start + 86_400_000, 0.05)
    long.make_history(start, start + 3 * 86_400_000, 0.05)
    assert short.trades == long.trades[: len(short.trades)] and len(long.trades) > 2 * len(short.trades)
    # The live market goes on with the order that would have crossed the end: the same trades, ids consecutive.
    made = len(short.trades)
    live, _ = short.make(3, start + 86_400_000)
    assert [(t.trade_id, t.price_text, t.quantity_text) for t in live] == [
        (t.trade_id, t.price_text, t.quantity_text) for t in long.trades[made : made + 3]]
