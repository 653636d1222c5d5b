"""The dataset's two tiers: complete days sealed into the lake and read back across the seam equal to the
exchange's record; the hot window kept by dropping only months whose every day is sealed, without making
writers wait; the scrub finding a flipped byte, a deleted file and deleted rows."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow.compute as pc
import pytest
from django.core.management import call_command
from django.db import connection

from streams import dataset, partitions
from streams.binance.protocol import TRADE, Trade
from streams.fake.exchange import FakeExchange, running_exchange
from streams.lake.files import write_day
from streams.lake.layout import DayKey
from streams.lake.schema import table_from_trades
from streams.models import PriceUpdate, SealedDay
from streams.storage import store_trades
from streams.tiers import lake
from tests.helpers import command_env, database_url, manage, wait_for
from workers import seal
from workers.archive_import import import_range
from workers.coverage import update_coverage
from workers.metrics import render
from workers.models import DayCoverage

pytestmark = pytest.mark.django_db(transaction=True)

# Old enough that whatever today is, October is a whole month outside a short hot window.
FIRST = date(2026, 10, 27)
LAST = date(2026, 11, 2)


@contextmanager
def history(settings: Any, tmp_path: Path, seed: int = 5) -> Iterator[FakeExchange]:
    """An exchange whose archive holds FIRST..LAST (and on), imported into the database; an empty lake."""
    settings.LAKE_URL = str(tmp_path / "lake")
    settings.DATASET_HOT_DAYS = None
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=seed, history_from=FIRST, history_rate=0.005) as ex:
        settings.BINANCE_REST_URL = settings.BINANCE_ARCHIVE_URL = ex.rest_url
        import_range(["BTCUSDT"], FIRST, LAST, fill_from_rest=False)
        yield ex


def record_between(ex: FakeExchange, first: date, end: date) -> list[Trade]:
    lo = datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp() * 1000
    hi = datetime(end.year, end.month, end.day, tzinfo=UTC).timestamp() * 1000
    return [t for t in ex.record("BTCUSDT") if lo <= t.trade_ts < hi]


def as_rows(trades: list[Trade]) -> list[tuple[int, str, str, int, bool]]:
    return [(t.trade_id, f"{t.price:.8f}", f"{t.quantity:.8f}", t.trade_ts, t.is_buyer_maker) for t in trades]


def table_rows(table: Any) -> list[tuple[int, str, str, int, bool]]:
    return [(r["trade_id"], f"{r['price']:.8f}", f"{r['volume']:.8f}", int(r["trade_time"].timestamp() * 1000),
             r["is_market_maker"]) for r in table.to_pylist()]


def sealed_days() -> dict[date, SealedDay]:
    return {row.day: row for row in SealedDay.objects.filter(symbol="BTCUSDT", channel=TRADE)}


def test_complete_days_are_sealed_and_read_back_from_both_tiers_equal_to_the_record(
        settings: Any, tmp_path: Path) -> None:
    with history(settings, tmp_path) as ex:
        report = seal.seal_due()
        days = sealed_days()
        assert sorted(days) == [FIRST + timedelta(days=n) for n in range(7)], report
        assert all(d.complete and d.source == "database" and d.state == "sealed" for d in days.values())
        assert seal.seal_due().sealed == []  # nothing changed: nothing sealed again
        # The read API over a range that starts mid-day and ends after the last sealed day (no gap, no duplicate).
        start = datetime(2026, 10, 28, 12, tzinfo=UTC)
        table = dataset.trades("BTCUSDT", start, "2026-11-05")
        record = [t for t in record_between(ex, date(2026, 10, 28), date(2026, 11, 3))
                  if t.trade_ts >= start.timestamp() * 1000]
        assert table_rows(table) == as_rows(record)
        assert set(table.column("market").to_pylist()) == {"spot"} and table.schema.field("price").type.scale == 8
        # DuckDB straight on the lake: the same rows, the partitions as columns.
        files = f"{lake().root}/trades/**/*.parquet"
        relation = duckdb.sql("SELECT count(*), min(trade_id), max(trade_id) FROM read_parquet($f, "
                              "hive_partitioning=true) WHERE ticker_symbol = 'BTCUSDT'", params={"f": files})
        assert relation is not None
        count, first, last = relation.fetchall()[0]
        whole = record_between(ex, FIRST, LAST + timedelta(days=1))
        assert (count, first, last) == (len(whole), whole[0].trade_id, whole[-1].trade_id)


def test_a_day_healed_after_it_was_sealed_is_sealed_again_from_both_tiers(settings: Any, tmp_path: Path) -> None:
    with history(settings, tmp_path) as ex:
        seal.seal_due()
        day = date(2026, 10, 30)
        rows = record_between(ex, day, day + timedelta(days=1))
        # The lake's file of the day lacks a trade (as an archive file with a hole would have written it)...
        key = DayKey("spot", "BTCUSDT", TRADE, day)
        holey = table_from_trades([t for t in rows if t.trade_id != rows[5].trade_id])
        seal.record(key, write_day(lake(), key, holey), source="archive", complete=False)
        start, end = datetime(2026, 10, 30, tzinfo=UTC), datetime(2026, 10, 31, tzinfo=UTC)
        PriceUpdate.objects.filter(ticker_symbol="BTCUSDT", trade_time__gte=start, trade_time__lt=end).delete()
        DayCoverage.objects.filter(day=day).update(dirty=True)
        update_coverage("BTCUSDT", TRADE)
        assert DayCoverage.objects.get(day=day).holes == [[rows[5].trade_id, rows[5].trade_id]]
        # ...and the audit stores the missing trade in the database: the day is sealed again, merged.
        store_trades([rows[5]])
        DayCoverage.objects.filter(day=day).update(dirty=True)
        update_coverage("BTCUSDT", TRADE)
        assert DayCoverage.objects.get(day=day).verdict == "complete"
        assert [str(k) for k in seal.seal_due().sealed] == ["spot BTCUSDT trade 2026-10-30"]
        again = sealed_days()[day]
        assert (again.rows, again.complete, again.source) == (len(rows), True, "merged")
        assert table_rows(dataset.trades("BTCUSDT", day, day + timedelta(days=1))) == as_rows(rows)


def test_the_hot_window_drops_a_month_only_when_every_day_of_it_is_sealed(settings: Any, tmp_path: Path) -> None:
    with history(settings, tmp_path) as ex:
        seal.seal_due()
        SealedDay.objects.filter(day=date(2026, 10, 29)).delete()  # one October day not sealed (yet)
        settings.DATASET_HOT_DAYS = 3
        dropped = seal.drop_cold().dropped  # (empty months other tests left past the window go too)
        assert "streams_trade_2026_11" in dropped and "streams_trade_2026_10" not in dropped  # November: all sealed
        october = partitions.Month(2026, 10)
        assert october in months()
        assert seal.seal_due().sealed == ["spot BTCUSDT trade 2026-10-29"]
        assert "streams_trade_2026_10" in seal.drop_cold().dropped
        assert october not in months()
        assert not PriceUpdate.objects.filter(trade_time__lt=datetime(2026, 11, 1, tzinfo=UTC)).exists()
        # October now lives in the lake alone: the report says so, and it still reads back whole.
        update_coverage("BTCUSDT", TRADE)
        row = DayCoverage.objects.get(day=date(2026, 10, 29))
        assert row.verdict == "complete"
        assert seal.where(row, sealed_days()[row.day], months(), seal.cold_before()) == "lake"
        assert table_rows(dataset.trades("BTCUSDT", FIRST, "2026-11-03")) == as_rows(
            record_between(ex, FIRST, date(2026, 11, 3)))


def test_dropping_a_partition_never_makes_writers_wait(settings: Any, tmp_path: Path) -> None:
    # A plain DROP TABLE of a partition waits for a transaction that writes to the table, and every writer
    # after it queues behind the drop: the second writer below would time out.
    with history(settings, tmp_path):
        seal.seal_due()
        settings.DATASET_HOT_DAYS = 3
        november = Trade("BTCUSDT", TRADE, 10**12, "1.00000000", "1.00000000", 1_793_577_600_000,
                         1_793_577_600_000, True)
        holder = psycopg.connect(database_url())
        holder.execute("INSERT INTO streams_trade (trade_time, trade_id, instrument_id, is_market_maker, price, volume)"
                       " VALUES (%s, 1, 32000, true, 1, 1)", [november.trade_time])  # open transaction, not committed
        dropping = threading.Thread(target=_drop_cold_in_a_thread)
        dropping.start()
        try:
            wait_for(lambda: _waiting_on_locks() > 0, timeout=20)  # the detach waits for the open transaction
            with psycopg.connect(database_url(), autocommit=True) as writer:
                writer.execute("SET lock_timeout = '2s'")  # a writer queued behind a DROP fails here
                writer.execute("INSERT INTO streams_trade (trade_time, trade_id, instrument_id, is_market_maker, "
                               "price, volume) VALUES (%s, 2, 32000, true, 1, 1)", [november.trade_time])
        finally:
            holder.rollback()
            holder.close()
            dropping.join(timeout=30)
        assert partitions.Month(2026, 10) not in months()


def months() -> set[partitions.Month]:
    stored = seal.stored_months()
    assert stored is not None  # PostgreSQL
    return stored


def _drop_cold_in_a_thread() -> None:
    try:
        seal.drop_cold()
    finally:
        connection.close()


def _waiting_on_locks() -> int:
    with psycopg.connect(database_url(), autocommit=True) as probe:
        row = probe.execute("SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
                              "wait_event_type = 'Lock' AND (query ILIKE '%DETACH%' OR query ILIKE '%DROP%')"
                              ).fetchone()
        return 0 if row is None else int(row[0])


def test_the_scrub_finds_a_flipped_byte_and_a_deleted_file_and_rebuilds_them_from_the_database(
        settings: Any, tmp_path: Path) -> None:
    with history(settings, tmp_path):
        seal.seal_due()
        flipped, deleted = DayKey("spot", "BTCUSDT", TRADE, date(2026, 10, 28)), DayKey(
            "spot", "BTCUSDT", TRADE, date(2026, 10, 31))
        path = Path(lake().full_path(flipped.path))
        data = bytearray(path.read_bytes())
        data[100] ^= 0x40
        path.write_bytes(bytes(data))
        Path(lake().full_path(deleted.path)).unlink()
        settings.DATASET_SCRUB_DAYS = 600 / 86_400  # every file in one pass
        report = seal.scrub()
        assert sorted(report.damaged) == [str(flipped), str(deleted)] == sorted(report.rebuilt)
        assert report.verified == 7
        assert seal.scrub().damaged == []  # rebuilt: right again


def test_the_scrub_marks_a_damaged_day_it_cannot_rebuild(settings: Any, tmp_path: Path) -> None:
    with history(settings, tmp_path):
        seal.seal_due()
        key = DayKey("spot", "BTCUSDT", TRADE, date(2026, 10, 28))
        Path(lake().full_path(key.path)).unlink()
        start = datetime(2026, 10, 28, tzinfo=UTC)
        PriceUpdate.objects.filter(trade_time__gte=start, trade_time__lt=start + timedelta(days=1)).delete()
        settings.DATASET_SCRUB_DAYS = 600 / 86_400
        report = seal.scrub()
        assert report.damaged == [str(key)] and report.rebuilt == []
        row = sealed_days()[key.day]
        assert row.state == "damaged" and row.problem == "the file is missing"


def test_the_scrub_finds_rows_deleted_from_a_hot_day_that_is_not_sealed(settings: Any, tmp_path: Path) -> None:
    with history(settings, tmp_path) as ex:
        day = date(2026, 10, 29)
        update_coverage("BTCUSDT", TRADE)
        rows = record_between(ex, day, day + timedelta(days=1))
        PriceUpdate.objects.filter(ticker_symbol="BTCUSDT", trade_id=rows[3].trade_id).delete()
        settings.DATASET_SCRUB_DAYS = 600 / 86_400
        report = seal.scrub(now=datetime(2026, 11, 3, tzinfo=UTC))
        assert report.hot_changed == ["BTCUSDT trade 2026-10-29"]
        update_coverage("BTCUSDT", TRADE)
        assert DayCoverage.objects.get(day=day).holes == [[rows[3].trade_id, rows[3].trade_id]]


def test_coverage_says_where_each_day_lives_and_recheck_verifies_the_sealed_files_at_once(
        settings: Any, tmp_path: Path) -> None:
    with history(settings, tmp_path):
        seal.seal_due()
        settings.DATASET_HOT_DAYS = 3
        seal.drop_cold()  # October and November leave the database: sealed, past the window
        out = io.StringIO()
        call_command("coverage", "BTCUSDT", "--from", "2026-10-28", "--to", "2026-10-28", "--json", stdout=out)
        (entry,) = json.loads(out.getvalue())["days"]
        assert (entry["verdict"], entry["where"], entry["seal"]["state"], entry["seal"]["complete"]) == (
            "complete", "lake", "sealed", True)
        key = DayKey("spot", "BTCUSDT", TRADE, date(2026, 10, 28))
        path = Path(lake().full_path(key.path))
        data = bytearray(path.read_bytes())
        data[200] ^= 0x01
        path.write_bytes(bytes(data))
        out = io.StringIO()
        call_command("coverage", "BTCUSDT", "--from", "2026-10-27", "--to", "2026-10-29", "--recheck", stdout=out)
        text = out.getvalue()
        assert "3 sealed files verified, 1 damaged (spot BTCUSDT trade 2026-10-28)" in text
        assert "0 rebuilt from the database" in text  # the database no longer holds October
        assert "3 sealed in the lake, 1 damaged" in text


def test_the_metrics_say_which_streams_have_incomplete_or_damaged_days(
        settings: Any, tmp_path: Path, clean_redis: None) -> None:
    with history(settings, tmp_path):
        seal.seal_due()
        DayCoverage.objects.filter(day=date(2026, 10, 30)).update(verdict="holes")
        SealedDay.objects.filter(day=date(2026, 10, 31)).update(state="damaged", problem="the file is missing")
        facts = seal.publish_facts(today=date(2026, 10, 31))
        assert facts["streams"]["btcusdt@trade"] == {"incomplete": 1, "damaged": 1, "yesterday_complete": 0}
        text = render().decode()
        assert 'collector_dataset_days_incomplete{stream="btcusdt@trade"} 1.0' in text
        assert 'collector_dataset_yesterday_complete{stream="btcusdt@trade"} 0.0' in text
        assert 'collector_dataset_days_damaged{stream="btcusdt@trade"} 1.0' in text
        assert "collector_dataset_sealed_days 7.0" in text


def test_live_days_join_the_lake_by_themselves_and_read_back_after_the_archives_without_a_gap(
        settings: Any, tmp_path: Path) -> None:
    # History from the archive up to yesterday and from REST up to now, then the live stream (the real client over
    # the fake exchange's sockets, stored by the one-off command); then midnight passes (the passes are given
    # tomorrow's date) and today is sealed as the history was.
    today = datetime.now(UTC).date()
    settings.LAKE_URL = str(tmp_path / "lake")
    with running_exchange(symbols={"BTCUSDT": 40.0}, seed=9, history_from=today - timedelta(days=3),
                          history_rate=0.01) as ex:
        settings.BINANCE_REST_URL = settings.BINANCE_ARCHIVE_URL = ex.rest_url
        import_range(["BTCUSDT"], today - timedelta(days=3), today)  # today's file is not out: REST up to now
        done = manage("binance_websocket_client", "--symbol", "btcusdt", "--limit", "300", "--resume",
                      env=command_env(ex, LAKE_URL=settings.LAKE_URL), timeout=120)
        assert done.returncode == 0, done.stderr
        live_ids = list(PriceUpdate.objects.filter(ticker_symbol="BTCUSDT", received_time__isnull=False).order_by(
            "trade_id").values_list("trade_id", flat=True))
        tomorrow = today + timedelta(days=1)
        update_coverage("BTCUSDT", TRADE, today=tomorrow)
        assert DayCoverage.objects.get(day=today).verdict == "unchecked"  # its end is not established yet
        # Tomorrow the archive publishes today's file (the exchange made no trade since): its last id closes the
        # day, and the live rows, identical, keep their receive time.
        ex.calm()
        ex.set_rates({"BTCUSDT": 0.0})
        ex.archive.clock = lambda: time.time() + 86_400
        import_range(["BTCUSDT"], today, today, fill_from_rest=False)
        update_coverage("BTCUSDT", TRADE, today=tomorrow)
        assert DayCoverage.objects.get(day=today).verdict == "complete"
        assert str(DayKey("spot", "BTCUSDT", TRADE, today)) in seal.seal_due(today=tomorrow).sealed
        stored = PriceUpdate.objects.filter(ticker_symbol="BTCUSDT").order_by("-trade_id").first()
        assert stored is not None
        table = dataset.trades("BTCUSDT", today - timedelta(days=3), tomorrow)
        record = [t for t in ex.record("BTCUSDT") if t.trade_id <= stored.trade_id]
        assert table.column("trade_id").to_pylist() == [t.trade_id for t in record]
        assert sealed_days()[today].source == "database" and sealed_days()[today].complete
        received = table.filter(pc.is_valid(table.column("received_time"))).column("trade_id").to_pylist()
        assert received == live_ids and len(live_ids) >= 200  # the live trades keep their receive time
