"""/api/trades/: the dataset's rows across both tiers for staff or the metrics token, streamed (under ASGI as
under WSGI, and through the real web process), bounded in range; bad input is a 400 naming the problem.
/api/coverage/ is bounded too."""

from __future__ import annotations

import io
import json
import os
import signal
import warnings
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from django.contrib.auth.models import User
from django.http import StreamingHttpResponse
from django.test import AsyncClient, Client

from benchmarks.webprocess import free_port, start_web, wait_listening
from streams import dataset
from streams.lake.layout import DayKey
from streams.lake.schema import READ_SCHEMA
from tests.helpers import database_url
from tests.history import BOTH, DATABASE_ONLY, FIRST, as_rows, day_after, history, table_rows
from workers.models import DayCoverage

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "rd-Tk9vQx2LmZp7Wn4sYb8HcJe3FgUa6Ri"  # strong enough for the settings' check
RANGE = {"symbol": "btcusdt", "from": "2026-10-31T06:00:00Z", "to": str(day_after(DATABASE_ONLY))}


def staff() -> Client:
    client = Client()
    client.force_login(User.objects.get_or_create(username="ops", defaults={"is_staff": True})[0])
    return client


def body(response: Any) -> bytes:
    return b"".join(response.streaming_content)


def test_staff_get_the_rows_of_both_tiers_in_each_format(settings: Any, tmp_path: Path) -> None:
    with history(settings, tmp_path) as h:
        expected = dataset.trades("BTCUSDT", RANGE["from"], RANGE["to"])
        client = staff()
        answers = {fmt: client.get("/api/trades/", {**RANGE, "format": fmt}) for fmt in ("csv", "ndjson", "parquet")}
        record = as_rows([t for t in h.record(date(2026, 10, 31), day_after(DATABASE_ONLY))
                          if t.trade_time >= datetime(2026, 10, 31, 6, tzinfo=UTC)])
    assert table_rows(expected) == record and len(record) > 500
    assert all(a.status_code == 200 and a.streaming for a in answers.values())
    assert answers["parquet"]["Content-Type"] == "application/vnd.apache.parquet"
    assert answers["parquet"]["Content-Disposition"] == (
        'attachment; filename="spot-BTCUSDT-trade-20261031T060000Z-20261103T000000Z.parquet"')
    assert pq.read_table(pa.BufferReader(body(answers["parquet"]))).equals(expected)
    csv = pa_csv.read_csv(io.BytesIO(body(answers["csv"])), convert_options=pa_csv.ConvertOptions(
        column_types={f.name: f.type for f in READ_SCHEMA}))
    assert csv.column_names == READ_SCHEMA.names and csv.cast(READ_SCHEMA).equals(expected)
    lines = [json.loads(line) for line in body(answers["ndjson"]).splitlines()]
    assert [(o["trade_id"], Decimal(o["price"])) for o in lines] == [(r[0], r[1]) for r in record]


def test_only_staff_or_the_metrics_token_get_trades(settings: Any) -> None:
    settings.METRICS_TOKEN = TOKEN
    assert Client().get("/api/trades/", RANGE).status_code == 401
    assert Client().get("/api/trades/", RANGE, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    settings.STATUS_PUBLIC = True  # opens the status pages, not the dataset
    assert Client().get("/api/trades/", RANGE).status_code == 401
    answer = Client().get("/api/trades/", RANGE, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert answer.status_code == 200 and body(answer).startswith(b"market,ticker_symbol,channel,trade_id,")


def test_bad_requests_are_400_with_the_problem_named(settings: Any) -> None:
    settings.DATASET_API_MAX_DAYS = 31
    client = staff()
    for query, message in [
        ({"from": "2026-11-01"}, "symbol is missing"),
        ({"symbol": "BTCUSDT"}, "from is missing"),
        ({**RANGE, "from": "9999-12-31"}, "from 9999-12-31 is outside the dataset (2017-01-01 to "),
        ({**RANGE, "to": "2026-11-31"}, "to '2026-11-31' is not a date or time"),
        ({**RANGE, "symbol": "BTC/USDT"}, "invalid symbol 'BTC/USDT'"),
        ({**RANGE, "channel": "book"}, "unknown channel 'book'"),
        ({**RANGE, "market": "options"}, "unknown market 'options'"),
        ({**RANGE, "format": "xlsx"}, "unknown format 'xlsx'; expected one of parquet, csv, ndjson"),
        ({**RANGE, "from": "2026-01-01", "to": "2026-03-01"},
         "from..to spans 59.0 days; DATASET_API_MAX_DAYS=31 days at most per request"),
        ({**RANGE, "from": "2026-11-02", "to": "2026-11-01"}, "to 2026-11-01 is before from 2026-11-02"),
    ]:
        answer = client.get("/api/trades/", query)
        assert answer.status_code == 400 and message in answer.json()["error"], (query, answer.content)
    settings.DATASET_API_MAX_DAYS = 60
    assert client.get("/api/trades/", {**RANGE, "from": "2026-01-01", "to": "2026-03-01"}).status_code == 200


def test_under_asgi_the_body_is_pulled_a_day_at_a_time(settings: Any, tmp_path: Path) -> None:
    # Django collects a synchronous iterator whole before sending it under ASGI (with a warning): the body
    # would be built in memory. An async iterator gets each day's chunk as the server sends it.
    from asgiref.sync import async_to_sync

    settings.METRICS_TOKEN = TOKEN
    query = {"symbol": "BTCUSDT", "from": str(FIRST), "to": str(day_after(DATABASE_ONLY)), "format": "parquet"}

    async def fetch() -> tuple[bool, list[bytes]]:
        answer = cast(StreamingHttpResponse, await AsyncClient().get(
            "/api/trades/", query, headers={"Authorization": f"Bearer {TOKEN}"}))
        assert not isinstance(answer.streaming_content, Iterable)
        return answer.is_async, [chunk async for chunk in answer.streaming_content]

    with history(settings, tmp_path):
        expected = dataset.trades("BTCUSDT", FIRST, day_after(DATABASE_ONLY))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            is_async, chunks = async_to_sync(fetch)()
    assert is_async and not [w for w in caught if "StreamingHttpResponse" in str(w.message)]
    assert len(chunks) >= (day_after(DATABASE_ONLY) - FIRST).days  # a row group per day, each sent by itself
    assert pq.read_table(pa.BufferReader(b"".join(chunks))).equals(expected)


@pytest.mark.slow
def test_the_web_process_streams_a_parquet_body_in_chunks(settings: Any, tmp_path: Path) -> None:
    with history(settings, tmp_path) as h:
        expected = dataset.trades("BTCUSDT", FIRST, day_after(DATABASE_ONLY))
        port = free_port()
        env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", "LOG_LEVEL": "WARNING",
               "DATABASE_URL": database_url(), "REDIS_URL": settings.REDIS_URL, "LAKE_URL": settings.LAKE_URL,
               "ALLOWED_HOSTS": "127.0.0.1", "METRICS_TOKEN": TOKEN}
        process = start_web(port, env)
        try:
            wait_listening(port, process)
            query = {"symbol": "BTCUSDT", "from": str(FIRST), "to": str(day_after(DATABASE_ONLY)), "format": "parquet"}
            with httpx.stream("GET", f"http://127.0.0.1:{port}/api/trades/", params=query, timeout=60,
                              headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
                parts = list(answer.iter_raw())
                headers = answer.headers
            refused = httpx.get(f"http://127.0.0.1:{port}/api/trades/", params={**query, "from": "9999-12-31"},
                                headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
            # A day that cannot be read once the body has begun: the transfer is cut, not ended as if whole.
            (h.lake_root / DayKey("spot", "BTCUSDT", "trade", date(2026, 10, 30)).path).unlink()
            with pytest.raises(httpx.RemoteProtocolError):
                httpx.get(f"http://127.0.0.1:{port}/api/trades/", params={**query, "format": "csv"}, timeout=60,
                          headers={"Authorization": f"Bearer {TOKEN}"})
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert pq.read_table(pa.BufferReader(b"".join(parts))).equals(expected)
    assert refused.status_code == 400 and refused.json()["error"].startswith("from 9999-12-31 is outside")


def test_a_failure_after_the_first_byte_is_logged_once_and_raised(settings: Any, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with history(settings, tmp_path) as h:
        (h.lake_root / DayKey("spot", "BTCUSDT", "trade", date(2026, 10, 30)).path).unlink()
        answer = staff().get("/api/trades/", {"symbol": "BTCUSDT", "from": str(FIRST), "to": str(BOTH)})
        assert answer.status_code == 200  # the headers went before the day was read
        with pytest.raises(FileNotFoundError):
            body(answer)
    [line] = [r for r in caplog.records if r.name == "web.streaming"]
    assert "/api/trades/?symbol=BTCUSDT" in line.getMessage() and "the response is cut short" in line.getMessage()


def test_coverage_is_bounded_and_defaults_to_the_calendars_days(settings: Any) -> None:
    settings.COVERAGE_API_MAX_DAYS = 366
    today = datetime.now(UTC).date()
    DayCoverage.objects.bulk_create([DayCoverage(symbol="BTCUSDT", channel="trade", day=today - timedelta(days=n),
                                                 verdict="complete", dirty=False) for n in range(400)])
    client = staff()
    days = [d["day"] for d in client.get("/api/coverage/").json()["days"]]
    assert days == [str(today - timedelta(days=n)) for n in range(34, -1, -1)]  # the last 35 days, not 400
    year = client.get("/api/coverage/", {"from": str(today - timedelta(days=365)), "to": str(today)}).json()
    assert len(year["days"]) == 366
    answer = client.get("/api/coverage/", {"from": str(today - timedelta(days=399))})
    assert answer.status_code == 400 and answer.json() == {
        "error": f"from {today - timedelta(days=399)} to {today} spans 400 days; COVERAGE_API_MAX_DAYS=366 days at "
                 "most per request"}
    assert client.get("/api/coverage/", {"from": "2026-11-02", "to": "2026-11-01"}).status_code == 400
    assert client.get("/api/coverage/", {"symbol": "ETHUSDT"}).json() == {"days": []}


def test_the_coverage_range_of_a_month_still_answers_whole(settings: Any) -> None:
    first = date(2026, 10, 1)
    DayCoverage.objects.bulk_create([DayCoverage(symbol="BTCUSDT", channel="trade", day=first + timedelta(days=n))
                                     for n in range(31)])
    answer = staff().get("/api/coverage/", {"symbol": "BTCUSDT", "from": "2026-10-01", "to": "2026-10-31"})
    assert [d["day"] for d in answer.json()["days"]] == [str(first + timedelta(days=n)) for n in range(31)]
