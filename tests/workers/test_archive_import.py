"""Importing the archive against the fake exchange's copy of it: cold days into the lake and hot ones into the
database, equal to the exchange's record; every file stored completely or not at all, whatever is wrong with
it (each failure below was seen on a real run); a re-published file corrects what is stored."""

from __future__ import annotations

import io
import signal
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from streams import dataset
from streams.archive import next_month
from streams.binance.protocol import AGG_TRADE, TRADE, Trade, datetime_from_exchange
from streams.fake.archive import csv_bytes
from streams.fake.exchange import FakeExchange, running_exchange
from streams.fake.market import micros
from streams.models import PriceUpdate, SealedDay
from streams.storage import store_trades
from tests.helpers import command_env, free_port, manage, start_manage
from workers.archive_download import Bounds
from workers.archive_import import ArchiveImporter, Progress, import_range
from workers.models import ArchiveFile, DayCoverage
from workers.seal import cold_before

pytestmark = pytest.mark.django_db(transaction=True)

TODAY = datetime.now(UTC).date()
MONTH = (TODAY - timedelta(days=40)).replace(day=1)  # a month long over, whatever today is: cold
MONTH_END = next_month(MONTH) - timedelta(days=1)


@contextmanager
def archive_exchange(settings: Any, tmp_path: Path, seed: int, start: date, rate: float = 0.01
                     ) -> Iterator[FakeExchange]:
    settings.LAKE_URL = str(tmp_path / "lake")
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=seed, history_from=start, history_rate=rate) as ex:
        settings.BINANCE_REST_URL = settings.BINANCE_ARCHIVE_URL = ex.rest_url
        yield ex


def between(ex: FakeExchange, first: date, last: date, channel: str = TRADE) -> list[Trade]:
    lo, hi = (datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000 for d in (first, last + timedelta(1)))
    record = ex.record("BTCUSDT") if channel == TRADE else ex.agg_record("BTCUSDT")
    return [t for t in record if lo <= t.trade_ts < hi]


def as_rows(trades: list[Trade]) -> list[tuple[Any, ...]]:
    """The record as the dataset should hold it: exact decimals, the archive's (and REST's) microseconds."""
    return [(t.trade_id, Decimal(t.price_text), Decimal(t.quantity_text), datetime_from_exchange(micros(t.trade_ts)),
             t.is_buyer_maker) for t in trades]


def dataset_rows(first: date, last: date, channel: str = TRADE) -> list[tuple[Any, ...]]:
    table = dataset.trades("BTCUSDT", first, last + timedelta(days=1), channel=channel)
    return [(r["trade_id"], r["price"], r["volume"], r["trade_time"], r["is_market_maker"]) for r in table.to_pylist()]


def in_database(first: date, last: date) -> int:
    start, end = (datetime(d.year, d.month, d.day, tzinfo=UTC) for d in (first, last + timedelta(days=1)))
    return PriceUpdate.objects.filter(ticker_symbol="BTCUSDT", trade_time__gte=start, trade_time__lt=end).count()


def day_file(ex: FakeExchange, day: date, rows: list[Trade] | None = None) -> bytes:
    """The day's file as the archive would publish it, of `rows` (the record's by default)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"BTCUSDT-trades-{day}.csv", csv_bytes(rows if rows is not None else between(ex, day, day),
                                                                day >= date(2025, 1, 1)))
    return buffer.getvalue()


def test_cold_days_go_straight_into_the_lake_equal_to_the_record_and_a_second_import_adds_nothing(
        settings: Any, tmp_path: Path) -> None:
    last = MONTH_END + timedelta(days=2)
    with archive_exchange(settings, tmp_path, 31, MONTH - timedelta(days=2)) as ex:
        report = import_range(["BTCUSDT"], MONTH, last)
        expected = between(ex, MONTH, last)
        assert report.imported == [f"BTCUSDT-trades-{MONTH:%Y-%m}.zip", f"BTCUSDT-trades-{last - timedelta(1)}.zip",
                                   f"BTCUSDT-trades-{last}.zip"]
        assert report.inserted == len(expected) > 20_000 and not report.missing and not report.failed
        assert report.lake_days == (last - MONTH).days + 1 and in_database(MONTH, last) == 0
        assert dataset_rows(MONTH, last) == as_rows(expected)
        sealed = SealedDay.objects.get(day=MONTH + timedelta(days=3))
        assert (sealed.source, sealed.complete, sealed.rows) == ("archive", True, len(between(ex, sealed.day,
                                                                                                sealed.day)))
        day = DayCoverage.objects.get(symbol="BTCUSDT", day=MONTH + timedelta(days=3))
        assert day.archive_count == day.trades == sealed.rows and day.verdict == "complete"
        again = import_range(["BTCUSDT"], MONTH, last)
        assert again.inserted == 0 and again.skipped == report.imported and not again.imported
        forced = import_range(["BTCUSDT"], MONTH, last, force=True)
        assert (forced.inserted, forced.repaired, len(forced.imported)) == (0, 0, 3)
        assert dataset_rows(MONTH, last) == as_rows(expected)


def test_hot_days_go_into_the_database_and_the_seam_has_no_gap(settings: Any, tmp_path: Path) -> None:
    first, last = TODAY - timedelta(days=6), TODAY - timedelta(days=1)
    settings.DATASET_HOT_DAYS = 4  # the last 3 days before today are hot
    with archive_exchange(settings, tmp_path, 38, first - timedelta(days=1)) as ex:
        report = import_range(["BTCUSDT"], first, last, fill_from_rest=False)
        hot_from = cold_before()
        assert hot_from is not None and first < hot_from <= last
        assert report.lake_days == (hot_from - first).days
        assert in_database(first, hot_from - timedelta(days=1)) == 0
        assert in_database(hot_from, last) == len(between(ex, hot_from, last)) > 0
        assert dataset_rows(first, last) == as_rows(between(ex, first, last))


def test_aggregate_trades_files_are_imported_too(settings: Any, tmp_path: Path) -> None:
    with archive_exchange(settings, tmp_path, 39, MONTH) as ex:
        out = io.StringIO()
        call_command("import_archive", "BTCUSDT", "--from", str(MONTH), "--to", str(MONTH + timedelta(days=2)),
                     "--channel", "aggTrade", "--daily", stdout=out)
        expected = between(ex, MONTH, MONTH + timedelta(days=2), AGG_TRADE)
        table = dataset.trades("BTCUSDT", MONTH, MONTH + timedelta(days=3), channel=AGG_TRADE)
        assert table.column("trade_id").to_pylist() == [t.trade_id for t in expected]
        assert table.column("first_trade_id").to_pylist() == [t.first_trade_id for t in expected]
        assert "3 files imported" in out.getvalue()


def test_a_bad_row_stores_nothing_of_its_file_and_the_summary_says_it_failed(settings: Any, tmp_path: Path) -> None:
    bad, good = MONTH + timedelta(days=1), MONTH + timedelta(days=2)
    with archive_exchange(settings, tmp_path, 40, MONTH) as ex:
        text = csv_bytes(between(ex, bad, bad), bad >= date(2025, 1, 1)).split(b"\n")
        text[300] = text[300].replace(b".", b"x", 1)  # line 301: a price that is not a number
        ex.archive.replace("BTCUSDT", str(bad), _zipped(f"BTCUSDT-trades-{bad}.csv", b"\n".join(text)))
        out = io.StringIO()
        with pytest.raises(CommandError, match=f"BTCUSDT-trades-{bad}.zip: BTCUSDT-trades-{bad}.csv: line 301: "):
            call_command("import_archive", "BTCUSDT", "--from", str(bad), "--to", str(good), stdout=out)
        assert "1 files imported, 0 already imported, 0 not published, 1 failed (nothing of them stored)" in \
            out.getvalue()
        assert dataset_rows(bad, bad) == [] and not SealedDay.objects.filter(day=bad).exists()
        assert dataset_rows(good, good) == as_rows(between(ex, good, good))  # the run went on
        assert not ArchiveFile.objects.filter(name__contains=str(bad)).exists()


def test_a_file_corrupt_at_the_source_stores_nothing_and_its_corrected_upload_is_imported_whole(
        settings: Any, tmp_path: Path) -> None:
    # Its CHECKSUM is right (computed over the broken upload); only the zip's CRC, at the member's end, tells.
    day = MONTH + timedelta(days=3)
    with archive_exchange(settings, tmp_path, 41, MONTH) as ex:
        rows = between(ex, day, day)
        stored = io.BytesIO()
        with zipfile.ZipFile(stored, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(f"BTCUSDT-trades-{day}.csv", csv_bytes(rows, day >= date(2025, 1, 1)))
        data = bytearray(stored.getvalue())
        at = data.index(rows[-3].price_text.encode())
        data[at] = ord("9") if data[at] != ord("9") else ord("8")  # a wrong price, still a valid row
        ex.archive.replace("BTCUSDT", str(day), bytes(data))
        report = import_range(["BTCUSDT"], day, day, fill_from_rest=False)
        assert report.failed and "CRC" in report.failed[0][1] and dataset_rows(day, day) == []
        ex.archive.republish("BTCUSDT", str(day))
        again = import_range(["BTCUSDT"], day, day, fill_from_rest=False)
        assert again.imported == [f"BTCUSDT-trades-{day}.zip"]
        assert dataset_rows(day, day) == as_rows(rows)


@pytest.mark.parametrize("hot", [False, True])
def test_a_republished_file_with_other_values_corrects_what_is_stored_and_says_so(
        settings: Any, tmp_path: Path, hot: bool) -> None:
    # Storage that keeps the first text it saw cannot be corrected by a later, fixed file: compare and repair.
    day = MONTH + timedelta(days=5)
    if hot:
        settings.DATASET_HOT_DAYS = None  # everything in the database
    with archive_exchange(settings, tmp_path, 42, MONTH) as ex:
        rows = between(ex, day, day)
        wrong = [*rows]
        wrong[7] = wrong[7]._replace(price_text="1.00000000")
        ex.archive.replace("BTCUSDT", str(day), day_file(ex, day, wrong))
        import_range(["BTCUSDT"], day, day, fill_from_rest=False)
        assert dataset_rows(day, day)[7][1] == Decimal("1.00000000")
        ex.archive.republish("BTCUSDT", str(day))
        report = import_range(["BTCUSDT"], day, day, fill_from_rest=False)
        assert report.repaired == 1 and report.inserted == 0
        assert dataset_rows(day, day) == as_rows(rows)
        assert in_database(day, day) == (len(rows) if hot else 0)


def test_a_republished_file_fills_the_hole_the_first_upload_had(settings: Any, tmp_path: Path) -> None:
    day = MONTH + timedelta(days=9)
    with archive_exchange(settings, tmp_path, 35, day - timedelta(days=1)) as ex:
        ex.archive.drop_trades("BTCUSDT", str(day), 5)  # Binance's file had a hole
        import_range(["BTCUSDT"], day - timedelta(days=1), day + timedelta(days=1), fill_from_rest=False)
        coverage, whole = DayCoverage.objects.get(symbol="BTCUSDT", day=day), between(ex, day, day)
        middle = whole[len(whole) // 2]
        assert coverage.archive_count == len(whole) - 5
        assert coverage.verdict == "holes" and coverage.holes == [[middle.trade_id, middle.trade_id + 4]]
        assert not SealedDay.objects.get(day=day).complete
        ex.archive.republish("BTCUSDT", str(day))
        report = import_range(["BTCUSDT"], day - timedelta(days=1), day + timedelta(days=1))
        assert report.imported == [f"BTCUSDT-trades-{day}.zip"] and report.inserted == 5
        coverage.refresh_from_db()
        assert coverage.verdict == "complete" and coverage.holes == [] and coverage.archive_count == coverage.trades
        assert SealedDay.objects.get(day=day).complete
        assert dataset_rows(day - timedelta(days=1), day + timedelta(days=1)) == as_rows(
            between(ex, day - timedelta(days=1), day + timedelta(days=1)))


@pytest.mark.parametrize(("change", "reason"), [
    (lambda rows: [*rows[:10], rows[10]._replace(trade_ts=0), *rows[11:]], "time 0 is outside the file's period"),
    (lambda rows: [*rows[:10], rows[9], *rows[10:]], "comes after"),
    (lambda rows: [*rows[:10], rows[11], rows[10], *rows[12:]], "comes after"),
])
def test_rows_outside_the_files_day_and_ids_that_repeat_or_go_back_refuse_the_file(
        settings: Any, tmp_path: Path, change: Any, reason: str) -> None:
    day = MONTH + timedelta(days=2)
    with archive_exchange(settings, tmp_path, 43, MONTH) as ex:
        ex.archive.replace("BTCUSDT", str(day), day_file(ex, day, change(between(ex, day, day))))
        report = import_range(["BTCUSDT"], day, day, fill_from_rest=False)
        assert len(report.failed) == 1 and reason in report.failed[0][1]
        assert dataset_rows(day, day) == [] and PriceUpdate.objects.count() == 0
        assert not DayCoverage.objects.filter(day__lt=MONTH).exists()  # no 1970


def test_broken_zips_fail_their_own_file_and_the_run_goes_on(settings: Any, tmp_path: Path) -> None:
    days = [MONTH + timedelta(days=n) for n in range(6)]
    with archive_exchange(settings, tmp_path, 44, MONTH) as ex:
        good = day_file(ex, days[5])
        empty = _zipped(None, b"")
        bzip2 = _zipped(f"BTCUSDT-trades-{days[1]}.csv", csv_bytes(between(ex, days[1], days[1]), False),
                        zipfile.ZIP_BZIP2)
        encrypted = bytearray(_zipped(f"BTCUSDT-trades-{days[2]}.csv", csv_bytes(between(ex, days[2], days[2]), False),
                                      zipfile.ZIP_STORED))
        for header in (b"PK\x03\x04", b"PK\x01\x02"):  # the "encrypted" flag in both headers
            at = encrypted.index(header) + (6 if header == b"PK\x03\x04" else 8)
            encrypted[at] |= 0x01
        truncated = day_file(ex, days[3])[:-200]
        other_member = _zipped("something-else.csv", csv_bytes(between(ex, days[4], days[4]), False))
        for day, data in zip(days, [empty, bzip2, bytes(encrypted), truncated, other_member], strict=False):
            ex.archive.replace("BTCUSDT", str(day), data)
        assert good
        report = import_range(["BTCUSDT"], days[0], days[5], daily_only=True, fill_from_rest=False)
        reasons = dict(report.failed)
        assert report.imported == [f"BTCUSDT-trades-{days[5]}.zip"] and len(reasons) == 5
        assert "has no member" in reasons[f"BTCUSDT-trades-{days[0]}.zip"]
        assert "compression method 12" in reasons[f"BTCUSDT-trades-{days[1]}.zip"]
        assert "encrypted" in reasons[f"BTCUSDT-trades-{days[2]}.zip"]
        assert "zip" in reasons[f"BTCUSDT-trades-{days[3]}.zip"]
        assert "has no member" in reasons[f"BTCUSDT-trades-{days[4]}.zip"]
        assert dataset_rows(days[0], days[5]) == as_rows(between(ex, days[5], days[5]))


def test_a_zip_bomb_and_a_server_that_hardly_sends_are_given_up_on_at_once(settings: Any, tmp_path: Path) -> None:
    bomb_day, slow_day = MONTH + timedelta(days=1), MONTH + timedelta(days=2)
    with archive_exchange(settings, tmp_path, 45, MONTH) as ex:
        ex.archive.replace("BTCUSDT", str(bomb_day), _zipped(f"BTCUSDT-trades-{bomb_day}.csv", b"1" * (200 << 20)))
        ex.archive.trickle("BTCUSDT", str(slow_day), 0.05)
        with ArchiveImporter(bounds=Bounds(min_rate=1000.0, rate_window=1.0), cold_before=TODAY) as importer:
            importer.import_periods("BTCUSDT", [_day(bomb_day), _day(slow_day)])
        reasons = dict(importer.report.failed)
        assert "inflates" in reasons[f"BTCUSDT-trades-{bomb_day}.zip"]
        assert "bytes/s" in reasons[f"BTCUSDT-trades-{slow_day}.zip"]
        assert dataset_rows(bomb_day, slow_day) == []


def test_any_symbol_the_archive_has_is_imported_without_asking_the_exchange(settings: Any, tmp_path: Path) -> None:
    # A delisted coin (the exchange no longer lists it, or cannot be reached): backtests need it too.
    with archive_exchange(settings, tmp_path, 46, MONTH) as ex:
        settings.BINANCE_REST_URL = f"http://127.0.0.1:{free_port()}"  # nothing answers there
        out = io.StringIO()
        call_command("import_archive", "BTCUSDT", "--from", str(MONTH), "--to", str(MONTH), "--no-rest", stdout=out)
        assert "1 files imported" in out.getvalue()
        assert dataset_rows(MONTH, MONTH) == as_rows(between(ex, MONTH, MONTH))


def test_days_not_published_are_filled_from_rest_up_to_what_the_live_stream_stored(
        settings: Any, tmp_path: Path) -> None:
    first = TODAY - timedelta(days=3)
    with archive_exchange(settings, tmp_path, 33, first - timedelta(days=1)) as ex:
        ex.archive.withhold("BTCUSDT", str(first + timedelta(days=1)))  # a daily file published late
        ex.make_trades("BTCUSDT", 30)
        live = ex.record("BTCUSDT")[-10:]
        store_trades(live)  # what the live stream stored already
        out = io.StringIO()
        call_command("import_archive", "BTCUSDT", "--from", str(first), stdout=out)  # --to: today
        expected = between(ex, first, TODAY)
        rows = dataset_rows(first, TODAY)
        assert expected[-10:] == live
        assert rows[:-10] == as_rows(expected[:-10])  # the archive's days and REST's, exactly
        assert [r[0] for r in rows] == [t.trade_id for t in expected]  # every id once, up to the live ones
        assert f"not published yet: BTCUSDT-trades-{first + timedelta(days=1)}.zip" in out.getvalue()
        assert ex.stats.rest_requests["/api/v3/historicalTrades"] >= 2


def test_an_interrupted_import_resumes_with_the_files_it_had_not_finished(settings: Any, tmp_path: Path) -> None:
    last = MONTH + timedelta(days=4)
    with archive_exchange(settings, tmp_path, 34, MONTH) as ex:
        def interrupt(progress: Progress) -> None:
            if progress.files_done == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            import_range(["BTCUSDT"], MONTH, last, daily_only=True, on_progress=interrupt)
        assert ArchiveFile.objects.count() == 2
        report = import_range(["BTCUSDT"], MONTH, last, daily_only=True)
        assert len(report.skipped) == 2 and len(report.imported) == 3
        assert dataset_rows(MONTH, last) == as_rows(between(ex, MONTH, last))


def test_a_symbol_nobody_has_or_a_bad_range_is_refused_with_a_clear_error(settings: Any, tmp_path: Path) -> None:
    with archive_exchange(settings, tmp_path, 36, TODAY - timedelta(days=1), rate=0.001):
        with pytest.raises(CommandError, match="XRPUSDT"):
            call_command("import_archive", "XRPUSDT", "--from", str(TODAY), stdout=io.StringIO())
        with pytest.raises(CommandError, match="before --from"):
            call_command("import_archive", "BTCUSDT", "--from", str(TODAY), "--to", str(MONTH), stdout=io.StringIO())


def test_ctrl_c_stops_the_command_with_the_files_done_kept_and_a_second_run_finishes(
        settings: Any, tmp_path: Path) -> None:
    first, last = MONTH, MONTH + timedelta(days=19)
    with archive_exchange(settings, tmp_path, 37, MONTH, rate=0.05) as ex:
        env = command_env(ex, BINANCE_ARCHIVE_URL=ex.rest_url, LAKE_URL=settings.LAKE_URL)
        ex.archive.trickle("BTCUSDT", str(MONTH + timedelta(days=2)), 0.001)  # the import is mid-way at the ^C
        process = start_manage("import_archive", "BTCUSDT", "--from", str(first), "--to", str(last), "--daily",
                               env=env)
        assert process.stderr is not None
        while f"BTCUSDT-trades-{first}.zip: " not in (line := process.stderr.readline()):
            assert line, "the import ended before its first file"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130 and "run the same command again to resume" in err
        done = ArchiveFile.objects.count()
        assert 1 <= done < 20
        ex.archive.trickle("BTCUSDT", str(MONTH + timedelta(days=2)), 0.0)
        finished = manage("import_archive", "BTCUSDT", "--from", str(first), "--to", str(last), "--daily", env=env)
        assert finished.returncode == 0, finished.stderr
        assert f"{20 - done} files imported, {done} already imported" in finished.stdout
        assert dataset_rows(first, last) == as_rows(between(ex, first, last))


def _day(day: date) -> Any:
    from streams.archive import Period

    return Period(day, monthly=False)


def _zipped(member: str | None, data: bytes, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        if member is not None:
            archive.writestr(member, data)
    return buffer.getvalue()
