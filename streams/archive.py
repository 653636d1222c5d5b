"""Binance's public trade archive without I/O: which files cover a date range, their names, paths and URLs,
the datasets' columns, and the CHECKSUM line.

Source: binance/binance-public-data, README: spot "Trades" (`trade Id, price, qty, quoteQty, time,
isBuyerMaker, isBestMatch`) and "AggTrades" (`Aggregate tradeId, Price, Quantity, First tradeId, Last
tradeId, Timestamp, Was the buyer the maker, Was the trade the best price match`), both without a header;
"CHECKSUM": `<sha256>  <file name>`; "the timestamp for SPOT data from January 1st 2025 onwards will be in
microseconds". data.binance.vision's layout: `data/spot/{monthly,daily}/{trades,aggTrades}/<SYMBOL>/
<SYMBOL>-{trades,aggTrades}-YYYY-MM[-DD].zip`, each zip holding one CSV of the same name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

from streams.binance.protocol import AGG_TRADE, TRADE

ARCHIVE_URL: Final = "https://data.binance.vision"
# The archive's times: milliseconds before this day, microseconds from it on.
MICROSECONDS_FROM: Final = date(2025, 1, 1)
_CHECKSUM_RE: Final = re.compile(r"([0-9a-fA-F]{64})[ \t]+\*?(\S+)\s*")


class ArchiveFormatError(ValueError):
    """A CHECKSUM file, a zip or a CSV row that is not in the archive's format."""


@dataclass(frozen=True)
class Dataset:
    """One of the archive's trade datasets: its folder name, the channel it fills, its CSV columns."""

    name: str
    channel: str
    columns: tuple[str, ...]


TRADES: Final = Dataset("trades", TRADE, ("id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"))
AGG_TRADES: Final = Dataset("aggTrades", AGG_TRADE, ("id", "price", "qty", "first_id", "last_id", "time",
                                                      "isBuyerMaker", "isBestMatch"))
DATASETS: Final = {TRADE: TRADES, AGG_TRADE: AGG_TRADES}
COLUMNS: Final = TRADES.columns  # the trades file's columns: what `export_trades --format csv` writes


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

    @property
    def micros(self) -> bool:
        """Whether the file's times are microseconds (spot, from 2025-01-01 on) or milliseconds."""
        return self.start >= MICROSECONDS_FROM

    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days)]

    def daily(self) -> list[Period]:
        """The daily files that cover the same days."""
        return [Period(day, monthly=False) for day in self.days()]


@dataclass(frozen=True)
class FileRef:
    """One file of the archive: a symbol's dataset over a period."""

    symbol: str
    dataset: Dataset
    period: Period

    @property
    def name(self) -> str:
        return f"{self.symbol}-{self.dataset.name}-{self.period.label}.zip"

    @property
    def member(self) -> str:
        """The CSV the zip must hold (and the only one read)."""
        return self.name.removesuffix(".zip") + ".csv"

    @property
    def path(self) -> str:
        return f"data/spot/{self.period.kind}/{self.dataset.name}/{self.symbol}/{self.name}"

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.path}"


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


def parse_checksum(text: str, expected_name: str) -> str:
    """The SHA-256 (lower-case hex) of `expected_name` from a CHECKSUM file, or ArchiveFormatError."""
    match = _CHECKSUM_RE.fullmatch(text.strip() + "\n")
    if match is None:
        raise ArchiveFormatError(f"{expected_name}.CHECKSUM is not '<sha256>  <file name>': {text[:120]!r}")
    if match.group(2) != expected_name:
        raise ArchiveFormatError(f"{expected_name}.CHECKSUM names another file: {match.group(2)!r}")
    return match.group(1).lower()


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day as aware datetimes."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def archive_time(timestamp_us: int, day: date) -> int:
    """A time as the archive writes it on `day`: microseconds from 2025-01-01 on, milliseconds before."""
    return timestamp_us if day >= MICROSECONDS_FROM else timestamp_us // 1000
