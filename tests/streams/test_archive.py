"""Binance's archive: the pure core (plan, CHECKSUM, rows), and imports against the fake exchange's archive and
REST into real PostgreSQL, compared with the exchange's record."""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from streams.archive import (
    ArchiveFormatError,
    DayTally,
    Period,
    next_month,
    parse_checksum,
    plan_periods,
    tally_days,
    trades_from_lines,
)
from streams.binance.protocol import TRADE, Trade, datetime_from_exchange
from streams.fake.exchange import FakeExchange, running_exchange
from streams.fake.market import micros
from streams.models import PriceUpdate
from streams.storage import store_trades
from tests.helpers import command_env, manage, start_manage
from workers.archive_import import Progress, import_range
from workers.management.commands.import_archive import ProgressLine
from workers.models import ArchiveFile, DayCoverage

TODAY = datetime.now(UTC).date()
MONTH = (TODAY - timedelta(days=40)).replace(day=1)  # a month long over, whatever today is
MONTH_END = next_month(MONTH) - timedelta(days=1)


# --- the pure core ------------------------------------------------------------------------------------


def test_whole_months_that_are_over_come_as_monthly_files_the_rest_as_daily_ones() -> None:
    plan = plan_periods(date(2026, 9, 29), date(2026, 11, 2), today=date(2026, 12, 1))
    assert [p.label for p in plan] == ["2026-09-29", "2026-09-30", "2026-10", "2026-11-01", "2026-11-02"]
    plan = plan_periods(date(2026, 11, 1), date(2026, 12, 5), today=date(2026, 12, 1))  # no day after today
    assert [p.label for p in plan] == ["2026-11", "2026-12-01"]
    plan = plan_periods(date(2026, 11, 1), date(2026, 11, 30), today=date(2026, 11, 30))  # November not over
    assert len(plan) == 30 and not any(p.monthly for p in plan)
    assert Period(date(2026, 12, 1), monthly=True).end == date(2027, 1, 1)
    with pytest.raises(ValueError, match="before"):
        plan_periods(date(2026, 11, 2), date(2026, 11, 1), today=TODAY)


def test_a_checksum_file_gives_the_digest_of_the_file_it_names() -> None:
    digest = "a" * 64
    assert parse_checksum(f"{digest.upper()}  BTCUSDT-trades-2026-11.zip\n", "BTCUSDT-trades-2026-11.zip") == digest
    with pytest.raises(ArchiveFormatError, match="names another file"):
        parse_checksum(f"{digest}  ETHUSDT-trades-2026-11.zip", "BTCUSDT-trades-2026-11.zip")
    with pytest.raises(ArchiveFormatError, match="is not"):
        parse_checksum("<html>not found</html>", "BTCUSDT-trades-2026-11.zip")


def test_rows_become_trades_with_the_files_exact_decimal_text() -> None:
    lines = ["id,price,qty,quote_qty,time,is_buyer_maker,is_best_match",  # a header, if a file has one
             "7,61837.63000000,0.00010000,6.18376300,1735689600123456,True,True",
             "8,0.00000001,1000000.00000000,0.01000000,1704067200000,False,True\r"]
    trades = trades_from_lines("BTCUSDT", lines, 1)
    assert trades == [Trade("BTCUSDT", TRADE, 7, "61837.63000000", "0.00010000", 1735689600123456,
                            1735689600123456, True),
                      Trade("BTCUSDT", TRADE, 8, "0.00000001", "1000000.00000000", 1704067200000, 1704067200000,
                            False)]
    for bad in ("9,1e3,1,1,1735689600123456,True,True", "9,1.0,1.0,1,1735689600123456,Yes,True",
                "-9,1.0,1,1,1735689600123456,True,True", "9,1,1,1,1735689600123456,True",
                "9,1.0,1,1,+1735689600123456,True,True", "9,1..0,1,1,1735689600123456,True,True"):
        with pytest.raises(ArchiveFormatError, match="line 5"):
            trades_from_lines("BTCUSDT", [bad], 5)


def test_per_day_tallies_split_a_batch_at_midnight_utc() -> None:
    midnight = 1_764_547_200_000_000  # 2025-12-01 00:00 UTC in µs
    trades = [Trade("BTCUSDT", TRADE, i, "1.0", "1.0", midnight - 2 + i, midnight - 2 + i, False) for i in range(5)]
    tallies: dict[date, DayTally] = {}
    tally_days(trades[:3], tallies)
    tally_days(trades[3:], tallies)
    assert tallies == {date(2025, 11, 30): DayTally(2, 0, 1), date(2025, 12, 1): DayTally(3, 2, 4)}


def test_the_progress_line_redraws_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    line = ProgressLine(screen)
    line(Progress(files_total=3, files_done=1, trades_read=1000, inserted=900, current="X-trades-2026-11.zip"))
    line.done()
    assert screen.getvalue().startswith("\rfiles 1/3  trades 900 new of 1,000 read") and screen.getvalue()[-1] == "\n"
    assert "trades/s  X-trades-2026-11.zip" in screen.getvalue()


# --- imports ------------------------------------------------------------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)


@contextmanager
def archive_exchange(settings: Any, seed: int, start: date, rate: float = 0.01) -> Iterator[FakeExchange]:
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=seed, history_from=start, history_rate=rate) as ex:
        settings.BINANCE_REST_URL = settings.BINANCE_ARCHIVE_URL = ex.rest_url
        yield ex


def as_rows(trades: list[Trade]) -> list[tuple[Any, ...]]:
    """The record as storage should hold it: exact decimals, the archive's (and REST's) microseconds."""
    return [(t.trade_id, Decimal(t.price_text), Decimal(t.quantity_text), datetime_from_exchange(micros(t.trade_ts)),
             t.is_buyer_maker) for t in trades]


def stored_rows() -> list[tuple[Any, ...]]:
    return list(PriceUpdate.objects.filter(ticker_symbol="BTCUSDT", channel=TRADE).order_by("trade_id").values_list(
        "trade_id", "price", "volume", "trade_time", "is_market_maker"))


def between(ex: FakeExchange, first: date, last: date) -> list[Trade]:
    lo, hi = (datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000 for d in (first, last + timedelta(1)))
    return [t for t in ex.record("BTCUSDT") if lo <= t.trade_ts < hi]


@pytestmark_db
def test_an_import_of_a_month_and_two_days_equals_the_record_and_a_second_adds_nothing(settings: Any) -> None:
    last = MONTH_END + timedelta(days=2)
    with archive_exchange(settings, 31, MONTH - timedelta(days=2)) as ex:
        report = import_range(["BTCUSDT"], MONTH, last)
        expected = between(ex, MONTH, last)
        assert report.imported == [f"BTCUSDT-trades-{MONTH:%Y-%m}.zip", f"BTCUSDT-trades-{last - timedelta(1)}.zip",
                                   f"BTCUSDT-trades-{last}.zip"]
        assert report.inserted == len(expected) > 20_000 and not report.missing and not report.failed
        assert stored_rows() == as_rows(expected)
        assert ArchiveFile.objects.get(name=f"BTCUSDT-trades-{MONTH:%Y-%m}.zip").last_id == between(
            ex, MONTH, MONTH_END)[-1].trade_id
        # The archive's count per day is kept, and each day checks complete against it.
        day = DayCoverage.objects.get(symbol="BTCUSDT", day=MONTH + timedelta(days=3))
        assert day.archive_count == day.trades == len(between(ex, day.day, day.day)) and day.verdict == "complete"

        again = import_range(["BTCUSDT"], MONTH, last)
        assert again.inserted == 0 and again.skipped == report.imported and not again.imported
        ArchiveFile.objects.all().delete()  # even without the markers: storage's identity keeps it once
        forced = import_range(["BTCUSDT"], MONTH, last)
        assert forced.inserted == 0 and forced.duplicates == len(expected)
        assert stored_rows() == as_rows(expected)


@pytestmark_db
def test_a_file_that_does_not_match_its_checksum_is_refused_and_nothing_of_it_is_stored(settings: Any) -> None:
    bad, good = MONTH_END - timedelta(days=1), MONTH_END
    with archive_exchange(settings, 32, bad - timedelta(days=1)) as ex:
        ex.archive.corrupt("BTCUSDT", str(bad))
        with pytest.raises(CommandError, match=f"BTCUSDT-trades-{bad}.zip: checksum mismatch"):
            call_command("import_archive", "BTCUSDT", "--from", str(bad), "--to", str(good), stdout=io.StringIO())
        assert stored_rows() == as_rows(between(ex, good, good))  # the other day is imported
        assert not ArchiveFile.objects.filter(name__contains=str(bad)).exists()
        assert ex.archive.requests == 5  # both CHECKSUMs and zips, and the bad zip once more


@pytestmark_db
def test_days_not_published_are_filled_from_rest_up_to_what_the_live_stream_stored(settings: Any) -> None:
    first = TODAY - timedelta(days=3)
    with archive_exchange(settings, 33, first - timedelta(days=1)) as ex:
        ex.archive.withhold("BTCUSDT", str(first + timedelta(days=1)))  # a daily file published late
        ex.make_trades("BTCUSDT", 30)
        live = ex.record("BTCUSDT")[-10:]
        store_trades(live)  # what the live stream stored already
        out = io.StringIO()
        call_command("import_archive", "BTCUSDT", "--from", str(first), stdout=out)  # --to: today
        expected, rows = between(ex, first, TODAY), stored_rows()
        assert expected[-10:] == live
        assert rows[:-10] == as_rows(expected[:-10])  # the archive's days and REST's, exactly
        assert [r[0] for r in rows] == [t.trade_id for t in expected]  # every id once, up to the live ones
        assert f"not published yet: BTCUSDT-trades-{first + timedelta(days=1)}.zip" in out.getvalue()
        assert f"not published yet: BTCUSDT-trades-{TODAY}.zip" in out.getvalue()
        filled = len(between(ex, first + timedelta(days=1), first + timedelta(days=1))) + len(
            between(ex, TODAY, TODAY)) - 10
        assert f"{filled:,} from REST" in out.getvalue()
        assert ex.stats.rest_requests["/api/v3/historicalTrades"] >= 2


@pytestmark_db
def test_an_interrupted_import_resumes_with_the_files_it_had_not_finished(settings: Any) -> None:
    last = MONTH + timedelta(days=4)
    with archive_exchange(settings, 34, MONTH) as ex:
        def interrupt(progress: Progress) -> None:
            if progress.files_done == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            import_range(["BTCUSDT"], MONTH, last, daily_only=True, on_progress=interrupt)
        assert ArchiveFile.objects.count() == 2
        report = import_range(["BTCUSDT"], MONTH, last, daily_only=True)
        assert len(report.skipped) == 2 and len(report.imported) == 3
        assert stored_rows() == as_rows(between(ex, MONTH, last))


@pytestmark_db
def test_a_republished_file_is_imported_again_and_fills_the_hole_the_first_upload_had(settings: Any) -> None:
    day = MONTH + timedelta(days=9)
    with archive_exchange(settings, 35, day - timedelta(days=1)) as ex:
        ex.archive.drop_trades("BTCUSDT", str(day), 5)  # Binance's file had a hole
        import_range(["BTCUSDT"], day - timedelta(days=1), day + timedelta(days=1), fill_from_rest=False)
        coverage, whole = DayCoverage.objects.get(symbol="BTCUSDT", day=day), between(ex, day, day)
        middle = whole[len(whole) // 2]
        assert coverage.archive_count == len(whole) - 5
        assert coverage.verdict == "holes" and coverage.holes == [[middle.trade_id, middle.trade_id + 4]]
        ex.archive.republish("BTCUSDT", str(day))
        report = import_range(["BTCUSDT"], day - timedelta(days=1), day + timedelta(days=1))
        assert report.imported == [f"BTCUSDT-trades-{day}.zip"] and report.inserted == 5
        coverage.refresh_from_db()
        assert coverage.verdict == "complete" and coverage.holes == [] and coverage.archive_count == coverage.trades
        assert stored_rows() == as_rows(between(ex, day - timedelta(days=1), day + timedelta(days=1)))


@pytestmark_db
def test_an_unknown_symbol_or_a_bad_range_is_refused_with_a_clear_error(settings: Any) -> None:
    with archive_exchange(settings, 36, TODAY - timedelta(days=1), rate=0.001):
        with pytest.raises(CommandError, match="unknown symbol 'XRPUSDT'"):
            call_command("import_archive", "XRPUSDT", "--from", str(TODAY), stdout=io.StringIO())
        with pytest.raises(CommandError, match="before --from"):
            call_command("import_archive", "BTCUSDT", "--from", str(TODAY), "--to", str(MONTH), stdout=io.StringIO())


@pytestmark_db
def test_ctrl_c_stops_the_command_with_the_files_done_kept_and_a_second_run_finishes(settings: Any) -> None:
    first, last = MONTH, MONTH + timedelta(days=19)
    with archive_exchange(settings, 37, MONTH, rate=0.05) as ex:
        env = command_env(ex, BINANCE_ARCHIVE_URL=ex.rest_url)
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
        finished = manage("import_archive", "BTCUSDT", "--from", str(first), "--to", str(last), "--daily", env=env)
        assert finished.returncode == 0, finished.stderr
        assert f"{20 - done} files imported, {done} already imported" in finished.stdout
        assert stored_rows() == as_rows(between(ex, first, last))
