"""Completeness per symbol and day: holes found (rows deleted), healed by the audit far behind the newest ids
(REST, or the archive for wide ones), kept up to date incrementally, and shown by the command, the JSON API
and the status page's calendar."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from streams.binance.protocol import TRADE, Trade
from streams.fake.exchange import FakeExchange, running_exchange
from streams.models import PriceUpdate
from streams.storage import store_trades
from workers import audit
from workers.archive_import import import_range
from workers.audit import fill_holes
from workers.coverage import update_coverage
from workers.models import DayCoverage
from workers.watermark import watermark

pytestmark = pytest.mark.django_db(transaction=True)

TODAY = datetime.now(UTC).date()
START = TODAY - timedelta(days=12)


@contextmanager
def imported(settings: Any, seed: int, rate: float = 0.01) -> Iterator[FakeExchange]:
    """An exchange with history from START, imported from the archive up to now (today's trades from REST)."""
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=seed, history_from=START, history_rate=rate) as ex:
        settings.BINANCE_REST_URL = settings.BINANCE_ARCHIVE_URL = ex.rest_url
        import_range(["BTCUSDT"], START, TODAY)
        yield ex


def day_trades(ex: FakeExchange, day: date) -> list[Trade]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000
    return [t for t in ex.record("BTCUSDT") if start <= t.trade_ts < start + 86_400_000]


def verdicts() -> dict[date, str]:
    return dict(DayCoverage.objects.filter(symbol="BTCUSDT", channel=TRADE).values_list("day", "verdict"))


def delete_ids(first: int, last: int) -> None:
    PriceUpdate.objects.filter(ticker_symbol="BTCUSDT", channel=TRADE, trade_id__gte=first, trade_id__lte=last).delete()


def stored_ids() -> list[int]:
    return list(PriceUpdate.objects.filter(ticker_symbol="BTCUSDT").order_by("trade_id").values_list("trade_id",
                                                                                                      flat=True))


def test_imported_days_are_complete_and_today_stays_unchecked(settings: Any) -> None:
    with imported(settings, 41) as ex:
        days = verdicts()
        assert days[TODAY] == "unchecked"  # not over yet
        assert {d: v for d, v in days.items() if d != TODAY} == {
            START + timedelta(days=n): "complete" for n in range(12)}
        row = DayCoverage.objects.get(symbol="BTCUSDT", day=START + timedelta(days=4))
        record = day_trades(ex, row.day)
        assert (row.trades, row.archive_count, row.first_id, row.last_id, row.holes) == (
            len(record), len(record), record[0].trade_id, record[-1].trade_id, [])


def test_holes_made_by_deleting_rows_are_found_and_the_audit_fills_them_far_behind_the_newest_ids(
        settings: Any) -> None:
    settings.COLLECTOR_AUDIT_SCAN = 1_000  # the holes are ~10,000 ids behind the newest: ten slices away
    with imported(settings, 42) as ex:
        middle, edge = START + timedelta(days=1), START + timedelta(days=3)
        inside = day_trades(ex, middle)[100].trade_id
        delete_ids(inside, inside + 9)
        last_of_edge = day_trades(ex, edge)[-1].trade_id
        delete_ids(last_of_edge - 2, last_of_edge + 2)  # the last 3 of one day and the first 2 of the next
        out = io.StringIO()
        call_command("coverage", "BTCUSDT", "--recheck", "--json", stdout=out)
        days = {d["day"]: d for d in json.loads(out.getvalue())["days"]}
        assert days[str(middle)]["verdict"] == "holes" and days[str(middle)]["holes"] == [[inside, inside + 9]]
        assert days[str(middle)]["trades"] == days[str(middle)]["archive_count"] - 10
        for touched in (edge, edge + timedelta(days=1)):  # an edge hole shows on both days it touches
            assert days[str(touched)]["holes"] == [[last_of_edge - 2, last_of_edge + 2]]
        assert sum(d["verdict"] == "holes" for d in days.values()) == 3
        assert watermark("BTCUSDT", TRADE) == inside - 1  # sent back for the audit

        historical = ex.stats.rest_requests["/api/v3/historicalTrades"]
        passes = [fill_holes("BTCUSDT", TRADE) for _ in range(4)]
        assert passes[0] == (1, 10) and passes[1] == (1, 5) and passes[2:] == [(0, 0), (0, 0)]
        assert ex.stats.rest_requests["/api/v3/historicalTrades"] > historical
        update_coverage("BTCUSDT", TRADE)
        assert set(verdicts().values()) == {"complete", "unchecked"} and verdicts()[TODAY] == "unchecked"
        assert stored_ids() == [t.trade_id for t in ex.record("BTCUSDT")]


def test_a_wide_hole_in_published_days_is_filled_from_the_archive(settings: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(audit, "ARCHIVE_HOLE_MIN", 100)
    with imported(settings, 43) as ex:
        lost = day_trades(ex, START + timedelta(days=5))
        delete_ids(lost[0].trade_id, lost[-1].trade_id)  # a whole day gone
        call_command("coverage", "--recheck", stdout=io.StringIO())
        historical = ex.stats.rest_requests["/api/v3/historicalTrades"]
        requests = ex.archive.requests
        assert fill_holes("BTCUSDT", TRADE) == (1, len(lost))
        assert ex.stats.rest_requests["/api/v3/historicalTrades"] == historical  # not a single REST page
        assert ex.archive.requests > requests
        assert stored_ids() == [t.trade_id for t in ex.record("BTCUSDT")]


def test_complete_days_are_not_computed_again(settings: Any) -> None:
    with imported(settings, 44, rate=0.002):
        with CaptureQueriesContext(connection) as queries:
            computed = update_coverage("BTCUSDT", TRADE)
        assert computed == 1  # today only: the twelve complete days are final
        day_queries = [q["sql"] for q in queries.captured_queries if "trade_time" in q["sql"]]
        assert len(day_queries) <= 4, day_queries  # the ends of the range, and today's one aggregate


def test_a_stream_that_began_live_has_an_unchecked_first_day(settings: Any) -> None:
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=45, history_from=TODAY - timedelta(days=2),
                          history_rate=0.005) as ex:
        settings.BINANCE_REST_URL = ex.rest_url
        record = ex.record("BTCUSDT")
        yesterday = [t for t in record if t.trade_time.date() == TODAY - timedelta(days=1)]
        store_trades(yesterday[len(yesterday) // 2:])  # collected from midday on, up to now
        store_trades([t for t in record if t.trade_time.date() == TODAY])
        fill_holes("BTCUSDT", TRADE)
        update_coverage("BTCUSDT", TRADE)
        assert verdicts() == {TODAY - timedelta(days=1): "unchecked", TODAY: "unchecked"}  # nothing says when
        # that first day began; importing it from the archive completes it.
        settings.BINANCE_ARCHIVE_URL = ex.rest_url
        import_range(["BTCUSDT"], TODAY - timedelta(days=1), TODAY - timedelta(days=1))
        assert verdicts()[TODAY - timedelta(days=1)] == "complete"


def test_the_api_the_command_and_the_status_calendar_show_the_days(settings: Any) -> None:
    with imported(settings, 46, rate=0.002) as ex:
        hole = day_trades(ex, START + timedelta(days=2))[5].trade_id
        delete_ids(hole, hole)
        call_command("coverage", "--recheck", stdout=io.StringIO())
    client = Client()
    query = {"symbol": "btcusdt", "from": str(START + timedelta(days=1)), "to": str(START + timedelta(days=3))}
    assert client.get("/api/coverage/", query).status_code == 401  # internal, like /api/streams/
    client.force_login(User.objects.create_user("ops", password="not-used-here-7Q", is_staff=True))
    answer = client.get("/api/coverage/", query).json()
    assert [d["day"] for d in answer["days"]] == [str(START + timedelta(days=n)) for n in (1, 2, 3)]
    assert set(answer["days"][1]) == {"symbol", "channel", "day", "trades", "first_id", "last_id", "holes",
                                      "archive_count", "verdict", "where", "seal"}
    assert answer["days"][1]["holes"] == [[hole, hole]] and answer["days"][1]["verdict"] == "holes"
    assert answer["days"][0]["symbol"] == "BTCUSDT" and answer["days"][0]["channel"] == "trade"
    out = io.StringIO()
    call_command("coverage", "BTCUSDT", "--from", query["from"], "--to", query["to"], "--json", stdout=out)
    assert json.loads(out.getvalue()) == answer
    assert client.get("/api/coverage/", {"from": "2026-13-01"}).status_code == 400

    table = io.StringIO()
    call_command("coverage", "BTCUSDT", stdout=table)
    text = table.getvalue()
    assert f"{START + timedelta(days=2)}" in text and "holes      database" in text and f"  {hole}..{hole}" in text

    page = client.get("/status/").content.decode()
    assert 'class="holes"' in page and f"holes {hole}..{hole}" in page
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", password="not-used-here-7Q"))
    assert f"[[{hole}, {hole}]]" in admin.get("/admin/workers/daycoverage/?verdict=holes").content.decode()
    assert "BTCUSDT-trades-" in admin.get("/admin/workers/archivefile/").content.decode()
    assert page.count('class="complete"') == 11


def test_a_hole_of_many_days_is_filled_from_the_archive_a_few_days_a_pass(settings: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(audit, "ARCHIVE_HOLE_MIN", 100)
    monkeypatch.setattr(audit, "ARCHIVE_DAYS_PER_PASS", 2)
    with imported(settings, 47) as ex:
        lost = day_trades(ex, START + timedelta(days=3)) + day_trades(ex, START + timedelta(days=4)) + day_trades(
            ex, START + timedelta(days=5))
        delete_ids(lost[0].trade_id, lost[-1].trade_id)  # three whole days gone
        call_command("coverage", "--recheck", stdout=io.StringIO())
        historical = ex.stats.rest_requests["/api/v3/historicalTrades"]
        first = fill_holes("BTCUSDT", TRADE)
        assert first[0] == 1 and 0 < first[1] < len(lost)  # two days this pass, not a REST walk of the rest
        assert fill_holes("BTCUSDT", TRADE) == (1, len(lost) - first[1])
        assert ex.stats.rest_requests["/api/v3/historicalTrades"] == historical
        assert stored_ids() == [t.trade_id for t in ex.record("BTCUSDT")]


def test_three_coverage_updates_at_once_all_finish_and_agree(settings: Any) -> None:
    # Seen: the audit, an import and the command computing the same stream at once: two of three died on the
    # unique key of the rows they all made.
    with imported(settings, 47):
        DayCoverage.objects.all().delete()
        start, errors = threading.Barrier(3), []

        def compute() -> None:
            try:
                start.wait()
                update_coverage("BTCUSDT", TRADE)
            except BaseException as exc:
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=compute) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert DayCoverage.objects.filter(symbol="BTCUSDT").count() == 13
        assert set(verdicts().values()) == {"complete", "unchecked"}
