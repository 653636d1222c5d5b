"""A history that the read path's tests read across both tiers: the fake archive's days imported, sealed into a
lake of the test's own, then October left to the lake alone, 2026-11-01 in both tiers and 2026-11-02 in the
database alone (its seal undone), as a dataset is after its hot window moved on and a day was healed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from streams.binance.protocol import TRADE, Trade, datetime_from_exchange
from streams.fake.exchange import FakeExchange, running_exchange
from streams.fake.market import micros
from streams.lake.files import remove_day
from streams.lake.layout import DayKey
from streams.models import PriceUpdate, SealedDay
from streams.tiers import lake
from workers import seal
from workers.archive_import import import_range

FIRST = date(2026, 10, 27)
LAST = date(2026, 11, 2)
BOTH = date(2026, 11, 1)        # sealed, and still in the database
DATABASE_ONLY = date(2026, 11, 2)  # in the database alone
SYMBOL = "BTCUSDT"


@dataclass
class History:
    exchange: FakeExchange
    lake_root: Path

    def record(self, first: date, end: date) -> list[Trade]:
        """The exchange's trades of the days first..end (end excluded)."""
        lo, hi = (datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000 for d in (first, end))
        return [t for t in self.exchange.record(SYMBOL) if lo <= t.trade_ts < hi]


@contextmanager
def history(settings: Any, tmp_path: Path, seed: int = 5) -> Iterator[History]:
    settings.LAKE_URL = str(tmp_path / "lake")
    settings.DATASET_HOT_DAYS = None
    with running_exchange(symbols={SYMBOL: 0.0}, seed=seed, history_from=FIRST, history_rate=0.005) as ex:
        settings.BINANCE_REST_URL = settings.BINANCE_ARCHIVE_URL = ex.rest_url
        import_range([SYMBOL], FIRST, LAST, fill_from_rest=False)
        assert len(seal.seal_due().sealed) == (LAST - FIRST).days + 1
        PriceUpdate.objects.filter(trade_time__lt=datetime(2026, 11, 1, tzinfo=UTC)).delete()
        remove_day(lake(), DayKey("spot", SYMBOL, TRADE, DATABASE_ONLY))
        SealedDay.objects.filter(day=DATABASE_ONLY).delete()
        yield History(ex, Path(lake().root))


def as_rows(trades: list[Trade]) -> list[tuple[int, Decimal, Decimal, datetime, bool]]:
    """Trades as (trade_id, price, volume, trade_time, is_market_maker): what a reader must get back (times as
    the archive gives them from 2025 on: a microsecond inside the exchange's millisecond)."""
    return [(t.trade_id, Decimal(t.price_text), Decimal(t.quantity_text), datetime_from_exchange(micros(t.trade_ts)),
             t.is_buyer_maker) for t in trades]


def table_rows(table: pa.Table) -> list[tuple[int, Decimal, Decimal, datetime, bool]]:
    columns = [table.column(n).to_pylist() for n in ("trade_id", "price", "volume", "trade_time", "is_market_maker")]
    return list(zip(*columns, strict=True))


def day_after(day: date) -> date:
    return day + timedelta(days=1)
