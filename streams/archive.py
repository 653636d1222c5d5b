"""Binance's public trade archive without I/O: which files cover a date range, their names and URLs, the
CHECKSUM line, and the CSV rows read as trades (the archive's `trades` dataset; its `aggTrades` dataset is
another one, with other columns, and is not read here).

Source: binance/binance-public-data, README ("Trades": `id, price, qty, quoteQty, time, isBuyerMaker,
isBestMatch`, no header; "CHECKSUM": `<sha256>  <file name>`; "the timestamp for SPOT data from January
1st 2025 onwards will be in microseconds"), and data.binance.vision's layout
`data/spot/{monthly,daily}/trades/<SYMBOL>/<SYMBOL>-trades-YYYY-MM[-DD].zip`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

from streams.binance.protocol import TRADE, Trade

ARCHIVE_URL: Final = "https://data.binance.vision"
# The archive's times: milliseconds before this day, microseconds from it on.
MICROSECONDS_FROM: Final = date(2025, 1, 1)
COLUMNS: Final = ("id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch")
_MICROSECOND_THRESHOLD: Final = 10**14  # as streams.binance.protocol: timestamps at or above are µs
_DAY_MS: Final = 86_400_000
_EPOCH_DAY: Final = date(1970, 1, 1)
_CHECKSUM_RE: Final = re.compile(r"([0-9a-fA-F]{64})[ \t]+\*?(\S+)\s*")
_BOOLEANS: Final = {"True": True, "False": False, "true": True, "false": False}


class ArchiveFormatError(ValueError):
    """A CHECKSUM file or a CSV row that is not in the archive's format."""


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """What one archive file covers: a whole month (a monthly file) or one UTC day (a daily file)."""

    start: date
    monthly: bool

    @property
    def end(self) -> date:
        """The first day after the period."""
        if not self.monthly:
            return self.start + timedelta(days=1)
        return next_month(self.start)

    @property
    def label(self) -> str:
        return self.start.strftime("%Y-%m" if self.monthly else "%Y-%m-%d")

    @property
    def kind(self) -> str:
        return "monthly" if self.monthly else "daily"

    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days)]

    def daily(self) -> list[Period]:
        """The daily files that cover the same days."""
        return [Period(day, monthly=False) for day in self.days()]


def next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def plan_periods(first: date, last: date, today: date) -> list[Period]:
    """The files that cover the days `first`..`last`: a monthly file for each whole month in the range that
    has ended before `today`, a daily file for every other day (none after `today`)."""
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    last = min(last, today)
    periods: list[Period] = []
    day = first
    while day <= last:
        month_end = next_month(day)
        if day.day == 1 and month_end - timedelta(days=1) <= last and month_end <= today:
            periods.append(Period(day, monthly=True))
            day = month_end
        else:
            periods.append(Period(day, monthly=False))
            day += timedelta(days=1)
    return periods


def file_name(symbol: str, period: Period) -> str:
    return f"{symbol}-trades-{period.label}.zip"


def csv_name(symbol: str, period: Period) -> str:
    """The CSV member inside the zip."""
    return f"{symbol}-trades-{period.label}.csv"


def file_path(symbol: str, period: Period) -> str:
    return f"data/spot/{period.kind}/trades/{symbol}/{file_name(symbol, period)}"


def file_url(base_url: str, symbol: str, period: Period) -> str:
    return f"{base_url.rstrip('/')}/{file_path(symbol, period)}"


def parse_checksum(text: str, expected_name: str) -> str:
    """The SHA-256 (lower-case hex) of `expected_name` from a CHECKSUM file, or ArchiveFormatError."""
    match = _CHECKSUM_RE.fullmatch(text.strip() + "\n")
    if match is None:
        raise ArchiveFormatError(f"{expected_name}.CHECKSUM is not '<sha256>  <file name>': {text[:120]!r}")
    if match.group(2) != expected_name:
        raise ArchiveFormatError(f"{expected_name}.CHECKSUM names another file: {match.group(2)!r}")
    return match.group(1).lower()


def day_of(timestamp: int) -> date:
    """The UTC day of an archive timestamp (milliseconds or microseconds, told by magnitude)."""
    ms = timestamp // 1000 if timestamp >= _MICROSECOND_THRESHOLD else timestamp
    return _EPOCH_DAY + timedelta(days=ms // _DAY_MS)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day as aware datetimes."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def archive_time(timestamp_us: int, day: date) -> int:
    """A time as the archive writes it on `day`: microseconds from 2025-01-01 on, milliseconds before."""
    return timestamp_us if day >= MICROSECONDS_FROM else timestamp_us // 1000


def trades_from_lines(symbol: str, lines: Sequence[str], first_line: int) -> list[Trade]:
    """Trades from CSV lines of a trades file (channel `trade`; as from REST: event time = trade time, no
    receive time). Prices and quantities stay the file's exact text (plain decimals; storage refuses what
    numeric(28,8) cannot hold). ArchiveFormatError names the first bad line. A header line (Binance's newer
    files of some datasets have one) is skipped. The lines must be ASCII (the caller decodes so)."""
    make, booleans = Trade._make, _BOOLEANS
    trades: list[Trade] = []
    append = trades.append
    try:  # the hot loop: one split, two checks, two int(), one tuple per row
        for line in lines:
            trade_id, price, qty, _quote, ts, maker, _best = line.split(",")
            if not (price.replace(".", "", 1).isdigit() and qty.replace(".", "", 1).isdigit()
                    and trade_id.isdigit() and ts.isdigit() and len(trade_id) <= 18 and len(ts) <= 17):
                raise ValueError("an id, a time, a price or a quantity is not plain digits in range")
            when = int(ts)
            append(make((symbol, TRADE, int(trade_id), price, qty, when, when, booleans[maker], None, None, None)))
    except (ValueError, KeyError) as exc:
        bad = len(trades)  # the line that failed made no trade
        if first_line + bad == 1 and lines[0].split(",")[0].strip().lower() in ("id", "trade_id", "trade id"):
            return trades_from_lines(symbol, lines[1:], 2)
        raise ArchiveFormatError(f"line {first_line + bad}: {lines[bad].strip()[:120]!r} is not a trade row "
                                 f"({type(exc).__name__}: {exc})") from None
    return trades


def line_chunks(text_chunks: Iterable[str]) -> Iterator[list[str]]:
    """Whole lines from chunks of text (a line may span chunks), one list per chunk, blank lines dropped."""
    rest = ""
    for chunk in text_chunks:
        lines = (rest + chunk).split("\n")
        rest = lines.pop()
        yield [line for line in lines if line and line != "\r"]
    if rest.strip():
        yield [rest]


@dataclass
class DayTally:
    """What a file holds for one UTC day: how many trades, the first and last id."""

    count: int = 0
    first_id: int | None = None
    last_id: int | None = None

    def add(self, count: int, first_id: int, last_id: int) -> None:
        self.count += count
        self.first_id = first_id if self.first_id is None else min(self.first_id, first_id)
        self.last_id = last_id if self.last_id is None else max(self.last_id, last_id)


def tally_days(trades: Sequence[Trade], tallies: dict[date, DayTally]) -> None:
    """Add a batch (in time order, as the archive is) to the per-day tallies, splitting it at midnights."""
    start = 0
    while start < len(trades):
        day = day_of(trades[start].trade_ts)
        bound = _day_start_ts(day + timedelta(days=1), trades[start].trade_ts)
        end = bisect.bisect_left(trades, bound, lo=start, key=_trade_ts)
        end = max(end, start + 1)  # never stuck on a row out of time order
        tallies.setdefault(day, DayTally()).add(end - start, trades[start].trade_id, trades[end - 1].trade_id)
        start = end


def _trade_ts(trade: Trade) -> int:
    return trade.trade_ts


def _day_start_ts(day: date, like: int) -> int:
    ms = (day - _EPOCH_DAY).days * _DAY_MS
    return ms * 1000 if like >= _MICROSECOND_THRESHOLD else ms
