"""Binance's archive without I/O: the plan of files, their names, the CHECKSUM, and a file's rows read and
checked whole by Arrow (every rule a file can break, in a zip made here)."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from streams.archive import (
    AGG_TRADES,
    TRADES,
    ArchiveFormatError,
    FileRef,
    Period,
    next_month,
    parse_checksum,
    plan_periods,
)
from streams.archive_rows import Limits, open_member, read_days
from workers.archive_import import Progress
from workers.management.commands.import_archive import ProgressLine

TODAY = datetime.now(UTC).date()
DAY = date(2025, 3, 4)
REF = FileRef("BTCUSDT", TRADES, Period(DAY, monthly=False))
MIDNIGHT_US = int(datetime(2025, 3, 4, tzinfo=UTC).timestamp()) * 1_000_000


def test_whole_months_that_are_over_come_as_monthly_files_the_rest_as_daily_ones() -> None:
    plan = plan_periods(date(2026, 9, 29), date(2026, 11, 2), today=date(2026, 12, 1))
    assert [p.label for p in plan] == ["2026-09-29", "2026-09-30", "2026-10", "2026-11-01", "2026-11-02"]
    plan = plan_periods(date(2026, 11, 1), date(2026, 12, 5), today=date(2026, 12, 1))  # no day after today
    assert [p.label for p in plan] == ["2026-11", "2026-12-01"]
    plan = plan_periods(date(2026, 11, 1), date(2026, 11, 30), today=date(2026, 11, 30))  # November not over
    assert len(plan) == 30 and not any(p.monthly for p in plan)
    assert Period(date(2026, 12, 1), monthly=True).end == date(2027, 1, 1) == next_month(date(2026, 12, 9))
    with pytest.raises(ValueError, match="before"):
        plan_periods(date(2026, 11, 2), date(2026, 11, 1), today=TODAY)


def test_each_dataset_has_its_own_files_in_the_archives_layout() -> None:
    monthly = FileRef("BTCUSDT", AGG_TRADES, Period(date(2024, 2, 1), monthly=True))
    assert monthly.path == "data/spot/monthly/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-02.zip"
    assert monthly.member == "BTCUSDT-aggTrades-2024-02.csv" and not monthly.period.micros
    assert REF.url("https://data.binance.vision/") == (
        "https://data.binance.vision/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2025-03-04.zip")
    assert REF.period.micros  # from 2025-01-01 on, spot files give microseconds


def test_a_checksum_file_gives_the_digest_of_the_file_it_names() -> None:
    digest = "a" * 64
    assert parse_checksum(f"{digest.upper()}  BTCUSDT-trades-2026-11.zip\n", "BTCUSDT-trades-2026-11.zip") == digest
    with pytest.raises(ArchiveFormatError, match="names another file"):
        parse_checksum(f"{digest}  ETHUSDT-trades-2026-11.zip", "BTCUSDT-trades-2026-11.zip")
    with pytest.raises(ArchiveFormatError, match="is not"):
        parse_checksum("<html>not found</html>", "BTCUSDT-trades-2026-11.zip")


# --- a file's rows ------------------------------------------------------------------------------------


def row(n: int, *, price: str = "61837.63000000", time_us: int | None = None, trade_id: int | None = None) -> str:
    when = MIDNIGHT_US + n * 1_000_000 if time_us is None else time_us
    return f"{100 + n if trade_id is None else trade_id},{price},0.00010000,6.18376300,{when},{n % 2 == 0},True"


def zipped(text: str, member: str = REF.member, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        archive.writestr(member, text)
    return buffer.getvalue()


def read(data: bytes, ref: FileRef = REF, limits: Limits | None = None) -> list[tuple[date, list[dict[str, object]]]]:
    limits = limits or Limits()
    with zipfile.ZipFile(io.BytesIO(data)) as archive, open_member(archive, ref, limits) as member:
        return [(day, table.to_pylist()) for day, table in read_days(member, ref, limits)]


def test_rows_become_the_lakes_columns_with_the_files_exact_decimals_and_microseconds() -> None:
    days = read(zipped("\n".join(row(n) for n in range(3)) + "\n"))
    assert [day for day, _ in days] == [DAY]
    first = days[0][1][0]
    assert (first["trade_id"], first["price"], first["volume"], first["is_market_maker"]) == (
        100, Decimal("61837.63000000"), Decimal("0.00010000"), True)
    assert first["trade_time"] == first["event_time"] == datetime(2025, 3, 4, tzinfo=UTC)
    assert first["received_time"] is None and first["first_trade_id"] is None


def test_a_header_row_as_futures_files_have_is_skipped() -> None:
    text = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n" + row(0) + "\n"
    assert len(read(zipped(text))[0][1]) == 1


def test_a_monthly_file_comes_out_one_utc_day_at_a_time_in_milliseconds_before_2025() -> None:
    ref = FileRef("BTCUSDT", TRADES, Period(date(2024, 11, 1), monthly=True))
    start_ms = int(datetime(2024, 11, 1, tzinfo=UTC).timestamp()) * 1000
    text = "".join(f"{n},1.00000000,1.00000000,1.0,{start_ms + n * 10 * 3_600_000},True,True\n" for n in range(70))
    days = read(zipped(text, ref.member), ref)
    # A row every 10 hours: 3 on days 0, 5, 10... (midnight, 10:00, 20:00), 2 on the others.
    assert [day for day, _ in days] == [date(2024, 11, 1) + timedelta(days=d) for d in range(29)]
    assert [len(rows) for _, rows in days][:3] == [3, 2, 3] and sum(len(rows) for _, rows in days) == 70
    assert days[0][1][1]["trade_time"] == datetime(2024, 11, 1, 10, tzinfo=UTC)


def test_aggregate_trades_keep_their_first_and_last_trade_ids() -> None:
    ref = FileRef("BTCUSDT", AGG_TRADES, Period(DAY, monthly=False))
    text = f"7,1.50000000,2.00000000,11,13,{MIDNIGHT_US + 5},False,True\n"
    (_, rows), = read(zipped(text, ref.member), ref)
    assert (rows[0]["trade_id"], rows[0]["first_trade_id"], rows[0]["last_trade_id"]) == (7, 11, 13)
    with pytest.raises(ArchiveFormatError, match="line 1: its first trade id is above its last"):
        read(zipped(f"7,1.5,2,14,13,{MIDNIGHT_US + 5},False,True\n", ref.member), ref)


@pytest.mark.parametrize(("text", "message"), [
    ("\n".join([row(0), row(1), row(2).replace("61837.63000000", "x1"), row(3)]),
     r"line 3: .* is not a trades row"),
    (row(0) + "\n" + row(1, price="1.123456789"), r"line 2: .* is not a trades row .*data loss"),
    (row(0) + "\n" + row(1).rsplit(",", 1)[0], r"line 2: .* is not a trades row"),
    (row(0) + "\n" + row(1, trade_id=100), r"line 2: trade id 100 comes after 100"),
    (row(0) + "\n" + row(1, trade_id=99), r"line 2: trade id 99 comes after 100"),
    (row(0) + "\n" + row(1, time_us=0), r"line 2: time 0 is outside the file's period 2025-03-04"),
    (row(0) + "\n" + row(1, time_us=MIDNIGHT_US + 86_400_000_000), r"line 2: time .* is outside the file's"),
    (row(0, time_us=MIDNIGHT_US + 9) + "\n" + row(1, time_us=MIDNIGHT_US + 8), r"line 2: time .* comes after"),
    (row(0) + "\n" + row(1, price="0.00000000"), r"line 2: price is not above zero"),
    (row(0) + "\n" + ",,,,,,", r"line 2: an empty field"),
])
def test_a_file_that_breaks_a_rule_is_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(ArchiveFormatError, match=message):
        read(zipped(text + "\n"))


def test_the_line_is_named_far_into_a_file_made_of_many_blocks() -> None:
    rows = [row(n, time_us=MIDNIGHT_US + n) for n in range(200_000)]
    rows[150_000] = rows[150_000].replace("61837.63000000", "61837.6x")
    with pytest.raises(ArchiveFormatError, match="line 150,001: "):
        read(zipped("\n".join(rows) + "\n"))


def test_a_zip_must_hold_the_expected_member_readable_and_of_a_sane_size() -> None:
    with pytest.raises(ArchiveFormatError, match=r"has no member BTCUSDT-trades-2025-03-04.csv \(it holds nothing"):
        read(_empty_zip())
    with pytest.raises(ArchiveFormatError, match=r"has no member .* \(it holds other.csv\)"):
        read(zipped(row(0), "other.csv"))
    with pytest.raises(ArchiveFormatError, match="compression method 12"):
        read(zipped(row(0), method=zipfile.ZIP_BZIP2))
    bomb = zipped("1" * (50 << 20))  # 50 MB of one line deflate to ~50 KB
    with pytest.raises(ArchiveFormatError, match=r"inflates .* times"):
        read(bomb)
    with pytest.raises(ArchiveFormatError, match="line 1 is longer than"):
        read(bomb, limits=Limits(max_ratio=10_000, block_bytes=1 << 20))
    with pytest.raises(ArchiveFormatError, match="bytes, over the"):
        read(zipped(row(0)), limits=Limits(max_member_bytes=10))


def test_a_crc_error_found_at_the_members_end_refuses_the_file() -> None:
    data = bytearray(zipped("\n".join(row(n) for n in range(2000)) + "\n", method=zipfile.ZIP_STORED))
    at = data.index(b"61837.63000000", len(data) // 2)
    data[at] = ord("7")  # still a valid row: only the CRC can tell
    with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
        read(bytes(data))


def _empty_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w"):
        pass
    return buffer.getvalue()


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
