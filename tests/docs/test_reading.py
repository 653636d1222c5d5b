"""docs/reading.md, run as written: every Python block in one namespace and every `$` command in bash, in a
folder holding the test's lake as `lake/`, against the database and a web process of the test's own; then
what each recipe produced is checked against the dataset and the exchange's record."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from benchmarks.webprocess import free_port, start_web, wait_listening
from streams import dataset
from tests.helpers import database_url
from tests.history import DATABASE_ONLY, FIRST, LAST, History, as_rows, day_after, history, table_rows

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reading.md"
DOCUMENTED_URL = "http://127.0.0.1:8000"
TOKEN = "rd-Tk9vQx2LmZp7Wn4sYb8HcJe3FgUa6Ri"
_BLOCK = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>\w+)\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    lang: str
    line: int
    text: str


def blocks(page: Path) -> list[Block]:
    source = page.read_text()
    found = []
    for match in _BLOCK.finditer(source):
        indent = len(match["indent"])
        text = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        found.append(Block(match["lang"], source.count("\n", 0, match.start()) + 1, text))
    return found


def commands(text: str) -> list[str]:
    """The `$ ...` lines of a console block (output lines, if any, are not run)."""
    return [line[2:] for line in text.splitlines() if line.startswith("$ ")]


@pytest.fixture
def web_process(settings: Any) -> Iterator[tuple[Callable[[str], str], dict[str, str]]]:
    """The Procfile's web process on the test's database and lake; its URL and the environment it runs in."""
    env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", "LOG_LEVEL": "WARNING",
           "DATABASE_URL": database_url(), "REDIS_URL": settings.REDIS_URL, "ALLOWED_HOSTS": "127.0.0.1",
           "METRICS_TOKEN": TOKEN}
    port = free_port()
    holder: dict[str, Any] = {}

    def start(lake_url: str) -> str:
        env["LAKE_URL"] = lake_url
        holder["process"] = start_web(port, env)
        wait_listening(port, holder["process"])
        return f"http://127.0.0.1:{port}"

    yield start, env
    if "process" in holder:
        holder["process"].send_signal(signal.SIGTERM)
        holder["process"].wait(timeout=30)


def test_every_recipe_runs_as_written_and_reads_what_was_collected(
        settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, web_process: Any) -> None:
    start, env = web_process
    work = tmp_path / "work"
    work.mkdir()
    page = blocks(PAGE)
    assert {b.lang for b in page} == {"python", "console"} and len(page) >= 12
    with history(settings, tmp_path / "data") as h:
        (work / "lake").symlink_to(h.lake_root)
        url = start(settings.LAKE_URL)
        monkeypatch.chdir(work)
        monkeypatch.setenv("METRICS_TOKEN", TOKEN)
        namespace: dict[str, Any] = {}
        for block in page:
            text = block.text.replace(DOCUMENTED_URL, url)
            if block.lang == "python":
                exec(compile(text, f"{PAGE}:{block.line}", "exec"), namespace)  # noqa: S102 - the docs' own code
                continue
            for command in commands(text):
                line = command.replace("python manage.py", f"{sys.executable} {ROOT / 'manage.py'}")
                done = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=work, env=env, capture_output=True,
                                      text=True, timeout=120, check=False)
                assert done.returncode in (0, 141) and "Traceback" not in done.stderr, (command, done.stderr)
        check_python_recipes(namespace, h)
        check_files(work, h)


def check_python_recipes(namespace: dict[str, Any], h: History) -> None:
    november_1 = h.record(date(2026, 11, 1), date(2026, 11, 2))
    assert table_rows(namespace["table"]) == as_rows(november_1) and len(november_1) > 300
    week = [FIRST + timedelta(days=n) for n in range(7)]
    assert namespace["per_day"] == {d: len(h.record(d, day_after(d))) for d in week}
    assert namespace["hourly"].column("trades").to_pylist() and sum(namespace["hourly"].column(
        "trades").to_pylist()) == len(november_1)
    volume = sum(Decimal(t.quantity_text) for t in november_1)
    assert namespace["volume"] == volume  # not a float's approximation
    assert namespace["turnover"] == sum(Decimal(t.price_text) * Decimal(t.quantity_text) for t in november_1)
    minutes = dataset.candles("BTCUSDT", "2026-11-01", "2026-11-02", "1m")
    assert namespace["per_minute"]["volume"].to_list() == minutes.column("volume").to_pylist()
    lake_days = week[:5]  # 27..31 October: in the lake alone
    assert [(row[0], row[1], row[2]) for row in namespace["by_date"]] == [
        ("BTCUSDT", d, len(h.record(d, day_after(d)))) for d in lake_days]
    assert namespace["daily"]["trades"].to_list() == [len(h.record(d, day_after(d))) for d in (
        *lake_days, date(2026, 11, 1))]  # the sealed days; 2 November is in the database alone
    assert table_rows(namespace["october_28"]) == as_rows(h.record(date(2026, 10, 28), date(2026, 10, 29)))
    noon = namespace["noon"]
    assert [Decimal(p) for p in noon["price"]] == [Decimal(t.price_text) for t in november_1
                                                    if t.trade_time.hour == 12]
    assert namespace["exported"] == len(h.record(FIRST, day_after(LAST)))


def check_files(work: Path, h: History) -> None:
    assert pq.read_table(work / "btcusdt-2026-11-01.parquet").equals(dataset.trades("BTCUSDT", "2026-11-01",
                                                                                     "2026-11-02"))
    noon = (work / "noon.csv").read_text().splitlines()
    assert noon[0].startswith("market,ticker_symbol,channel,trade_id,price,volume,trade_time")
    assert len(noon) - 1 == sum(1 for t in h.record(date(2026, 11, 1), date(2026, 11, 2)) if t.trade_time.hour == 12)
    first = [json.loads(line) for line in (work / "first.ndjson").read_text().splitlines()]
    assert [o["trade_id"] for o in first] == [t.trade_id for t in h.record(date(2026, 11, 1), date(2026, 11, 2))[:3]]
    assert pq.read_table(work / "btcusdt.parquet").equals(dataset.trades("BTCUSDT", "2026-10-30", "2026-11-03"))
    hourly = json.loads((work / "hourly.json").read_text())
    assert sum(c["trades"] for c in hourly["candles"]) == len(h.record(date(2026, 11, 1), date(2026, 11, 2)))
    exported = sorted(p.relative_to(work / "export").as_posix() for p in (work / "export").rglob("*.parquet"))
    assert exported[0] == f"trades/market=spot/channel=trade/ticker_symbol=BTCUSDT/date={FIRST}/" \
                          f"spot-BTCUSDT-trade-{FIRST}.parquet" and len(exported) == 7
    assert sorted(p.name for p in (work / "archive-csv").iterdir()) == [
        "BTCUSDT-trades-2026-11-01.csv.gz", f"BTCUSDT-trades-{DATABASE_ONLY}.csv.gz"]
