"""Export: one file per symbol and day, read back with pyarrow (Parquet) or compared with the archive's own CSV,
equal to the exchange's record; days that are not complete are exported with a warning or refused."""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from streams.binance.protocol import TRADE, Trade, datetime_from_exchange
from streams.export import SCHEMA
from streams.fake.exchange import FakeExchange, running_exchange
from streams.fake.market import micros, quote_quantity
from streams.models import PriceUpdate
from workers.archive_import import import_range

pytestmark = pytest.mark.django_db(transaction=True)

TODAY = datetime.now(UTC).date()
START = TODAY - timedelta(days=4)


@contextmanager
def imported(settings: Any, seed: int) -> Iterator[FakeExchange]:
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=seed, history_from=START, history_rate=0.02) as ex:
        settings.BINANCE_REST_URL = settings.BINANCE_ARCHIVE_URL = ex.rest_url
        import_range(["BTCUSDT"], START, TODAY - timedelta(days=1))
        yield ex


def day_trades(ex: FakeExchange, day: date) -> list[Trade]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000
    return [t for t in ex.record("BTCUSDT") if start <= t.trade_ts < start + 86_400_000]


def export(out: Path, *args: str) -> str:
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command("export_trades", "BTCUSDT", *args, "--out", str(out), stdout=stdout, stderr=stderr)
    return stdout.getvalue() + stderr.getvalue()


def test_the_parquet_files_read_back_with_pyarrow_equal_the_record(settings: Any, tmp_path: Path) -> None:
    first, last = START + timedelta(days=1), START + timedelta(days=2)
    with imported(settings, 51) as ex:
        output = export(tmp_path, "--from", str(first), "--to", str(last), "--format", "parquet")
        record = day_trades(ex, first) + day_trades(ex, last)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"BTCUSDT-trades-{first}.parquet",
                                                          f"BTCUSDT-trades-{last}.parquet"]
    assert "WARNING" not in output and f"2 files, {len(record):,} trades" in output
    table = pa.concat_tables([pq.read_table(tmp_path / f"BTCUSDT-trades-{d}.parquet") for d in (first, last)])
    assert table.schema.remove_metadata() == SCHEMA  # decimals, int64 µs UTC timestamps, booleans
    assert table.to_pylist() == [
        {"id": t.trade_id, "price": Decimal(t.price_text), "qty": Decimal(t.quantity_text),
         "quoteQty": Decimal(quote_quantity(t)), "time": datetime_from_exchange(micros(t.trade_ts)),
         "isBuyerMaker": t.is_buyer_maker, "isBestMatch": True} for t in record]
    metadata = pq.read_metadata(tmp_path / f"BTCUSDT-trades-{first}.parquet").metadata
    assert metadata is not None and metadata[b"symbol"] == b"BTCUSDT"


def test_the_csv_export_is_the_archives_own_file_for_the_day(settings: Any, tmp_path: Path) -> None:
    day = START + timedelta(days=2)
    with imported(settings, 52) as ex:
        export(tmp_path, "--from", str(day), "--to", str(day), "--format", "csv")
        archived = httpx.get(f"{ex.rest_url}/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-{day}.zip").content
    with zipfile.ZipFile(io.BytesIO(archived)) as archive:
        original = archive.read(f"BTCUSDT-trades-{day}.csv")
    exported = gzip.decompress((tmp_path / f"BTCUSDT-trades-{day}.csv.gz").read_bytes())
    assert exported == original and len(original.splitlines()) > 1000


def test_a_day_with_holes_is_exported_with_a_warning_or_refused_with_complete_only(
        settings: Any, tmp_path: Path) -> None:
    holed, whole = START + timedelta(days=1), START + timedelta(days=2)
    with imported(settings, 53) as ex:
        gone = day_trades(ex, holed)[50].trade_id
        PriceUpdate.objects.filter(ticker_symbol="BTCUSDT", channel=TRADE, trade_id=gone).delete()
        call_command("coverage", "--recheck", stdout=io.StringIO())
        with pytest.raises(CommandError, match=f"1 days refused .*{holed}: holes \\(holes {gone}..{gone}\\)"):
            export(tmp_path / "strict", "--from", str(holed), "--to", str(whole), "--format", "csv",
                   "--complete-only")
        assert [p.name for p in (tmp_path / "strict").iterdir()] == [f"BTCUSDT-trades-{whole}.csv.gz"]
        output = export(tmp_path / "lenient", "--from", str(holed), "--to", str(whole), "--format", "parquet")
    assert f"WARNING: exported though BTCUSDT {holed}: holes (holes {gone}..{gone})" in output
    table = pq.read_table(tmp_path / "lenient" / f"BTCUSDT-trades-{holed}.parquet")
    assert gone not in table.column("id").to_pylist() and table.num_rows == len(day_trades(ex, holed)) - 1


def test_days_without_trades_give_no_file(settings: Any, tmp_path: Path) -> None:
    with imported(settings, 54):
        output = export(tmp_path, "--from", str(START - timedelta(days=2)), "--to", str(START), "--format", "csv")
    assert [p.name for p in tmp_path.iterdir()] == [f"BTCUSDT-trades-{START}.csv.gz"]
    assert f"BTCUSDT {START - timedelta(days=1)}: no trades stored, no file" in output
