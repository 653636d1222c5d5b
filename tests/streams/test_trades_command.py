"""`manage.py trades`: the read API's rows across both tiers in Parquet, CSV and NDJSON, read back by pyarrow,
polars, pandas and DuckDB equal to the exchange's record; streamed a day at a time; bad input is one line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from streams import dataset, formats
from streams.lake.schema import READ_SCHEMA
from tests.helpers import database_url
from tests.history import BOTH, DATABASE_ONLY, FIRST, History, as_rows, day_after, history, table_rows

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 10, 28, 12, tzinfo=UTC)  # mid-day: the first day is cut
END = day_after(DATABASE_ONLY)


def expected(h: History) -> list[tuple[Any, ...]]:
    return as_rows([t for t in h.record(START.date(), END) if t.trade_time >= START])


def run(*args: str) -> str:
    err = io.StringIO()
    call_command("trades", "BTCUSDT", "--from", START.isoformat(), "--to", str(END), *args, stderr=err)
    return err.getvalue()


def test_parquet_csv_and_ndjson_hold_the_rows_of_both_tiers_equal_to_the_record(settings: Any, tmp_path: Path) -> None:
    with history(settings, tmp_path) as h:
        for fmt in formats.FORMATS:
            summary = run("--format", fmt, "--out", str(tmp_path / f"out.{fmt}"))
        api = dataset.trades("BTCUSDT", START, END)
        record = expected(h)
    assert table_rows(api) == record and len(record) > 2000
    assert f"{len(record):,} trades of {(END - START.date()).days} days" in summary

    parquet = pq.read_table(tmp_path / "out.parquet")
    assert parquet.equals(api) and parquet.schema.remove_metadata() == READ_SCHEMA
    days = pq.read_metadata(tmp_path / "out.parquet").num_row_groups
    assert days == (END - START.date()).days  # a row group per day part: written a day at a time

    csv = pl.read_csv(tmp_path / "out.csv", infer_schema=False)  # every field as its text
    assert csv.columns == READ_SCHEMA.names
    texts = list(zip(csv["trade_id"].to_list(), csv["price"].to_list(), csv["volume"].to_list(), strict=True))
    assert texts == [(str(r[0]), f"{r[1]:.8f}", f"{r[2]:.8f}") for r in record]
    assert csv["trade_time"][0] == record[0][3].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert set(csv["market"].to_list()) == {"spot"} and csv["received_time"][0] is None  # archive rows: none
    typed = duckdb.execute("SELECT count(*), sum(price::DECIMAL(28, 8)) FROM read_csv($f, all_varchar=true)",
                           {"f": str(tmp_path / "out.csv")}).fetchall()[0]
    assert typed == (len(record), sum(r[1] for r in record))

    lines = (tmp_path / "out.ndjson").read_text().splitlines()
    objects = [json.loads(line) for line in lines]
    assert [(o["trade_id"], Decimal(o["price"]), Decimal(o["volume"]), o["is_market_maker"]) for o in objects] == [
        (r[0], r[1], r[2], r[4]) for r in record]
    assert isinstance(objects[0]["price"], str) and objects[0]["trade_time"].endswith("Z")
    assert datetime.fromisoformat(objects[-1]["trade_time"]) == record[-1][3]
    frame = pl.read_ndjson(tmp_path / "out.ndjson", schema_overrides={"price": pl.String})
    assert sum(Decimal(p) for p in frame["price"]) == sum(r[1] for r in record)


def test_parquet_goes_to_stdout_byte_for_byte(settings: Any, tmp_path: Path) -> None:
    with history(settings, tmp_path):
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "DEBUG": "1",
               "DATABASE_URL": database_url(), "LAKE_URL": settings.LAKE_URL, "LOG_LEVEL": "WARNING"}
        done = subprocess.run([sys.executable, "manage.py", "trades", "btcusdt", "--from", str(BOTH), "--to",
                               str(END), "--format", "parquet"], cwd=ROOT, env=env, capture_output=True,
                              timeout=120, check=False)
        api = dataset.trades("BTCUSDT", BOTH, END)
    assert done.returncode == 0, done.stderr.decode()
    assert pq.read_table(pa.BufferReader(done.stdout)).equals(api) and api.num_rows > 500


def test_bad_input_is_a_one_line_error_naming_the_problem(settings: Any, tmp_path: Path) -> None:
    for args, message in [
        (["--from", "9999-12-31", "--to", "2026-11-02"], "--from 9999-12-31 is outside the dataset"),
        (["--from", "2026-11-02", "--to", "2026-11-01"], "--to 2026-11-01 is before --from 2026-11-02"),
        (["--from", "yesterday", "--to", "2026-11-01"], "--from 'yesterday' is not a date or time"),
    ]:
        with pytest.raises(CommandError, match=message):
            call_command("trades", "BTCUSDT", *args, stderr=io.StringIO())
    with pytest.raises(CommandError, match="invalid symbol 'BTC-USDT'"):
        call_command("trades", "BTC-USDT", "--from", "2026-11-01", "--to", "2026-11-02", stderr=io.StringIO())
    # As a user runs it: one line on stderr, no traceback.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "DEBUG": "1", "DATABASE_URL": database_url()}
    done = subprocess.run([sys.executable, "manage.py", "trades", "BTCUSDT", "--from", "9999-12-31", "--to",
                           "9999-12-31"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("CommandError: --from 9999-12-31 is outside the dataset (2017-01-01 to ")


def test_the_encoders_hand_out_a_day_before_reading_the_next() -> None:
    # Streamed: each format hands out a day's bytes before the next day is read, so a year of a symbol never
    # needs its size in memory.
    one_day = pa.Table.from_pylist([{
        "market": "spot", "ticker_symbol": "BTCUSDT", "channel": "trade", "trade_id": 1, "price": Decimal("1.5"),
        "volume": Decimal("0.00000001"), "trade_time": START, "event_time": START, "is_market_maker": True,
        "received_time": None, "first_trade_id": None, "last_trade_id": None}], schema=READ_SCHEMA)
    pulled: list[int] = []

    def days() -> Iterator[pa.Table]:
        for n in range(3):
            pulled.append(n)
            yield one_day

    for fmt in formats.FORMATS:
        pulled.clear()
        chunks = formats.encode(days(), fmt)
        assert next(chunk for chunk in chunks if b"BTCUSDT" in chunk or b"\x01" in chunk)
        assert pulled == [0], fmt
        rest = b"".join(chunks)
        assert pulled == [0, 1, 2] and rest


def test_a_reader_that_stops_early_ends_the_command_quietly(settings: Any, tmp_path: Path) -> None:
    # `| head`: the pipe closes long before the week is written; the command stops without a traceback.
    with history(settings, tmp_path):
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "DEBUG": "1",
               "DATABASE_URL": database_url(), "LAKE_URL": settings.LAKE_URL, "LOG_LEVEL": "WARNING"}
        line = (f"{sys.executable} manage.py trades BTCUSDT --from {FIRST} --to {END} --format ndjson | head -c 200"
                " > /dev/null; echo \"${PIPESTATUS[0]}\" >&2")
        done = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                              check=False)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    summary, status = done.stderr.strip().splitlines()[-2:]
    assert status == "0" and summary.endswith("; stopped there: the reader closed the pipe")
