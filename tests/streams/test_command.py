"""`manage.py binance_websocket_client` end to end: the fake exchange, a real database, real signals."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from decimal import Decimal
from functools import partial
from pathlib import Path

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.db import connection

from streams.binance.protocol import TRADE, Trade
from streams.broadcast import ALL_TRADES_GROUP
from streams.fake.exchange import FakeExchange, running_exchange
from streams.fake.faults import FaultRates
from streams.fake.proxy import tcp_proxy
from streams.models import PriceUpdate
from tests.helpers import command_env, database_url, manage, start_manage, wait_for
from tests.workers.test_supervision import in_micros

pytestmark = pytest.mark.django_db(transaction=True)

FAULTY = FaultRates(drop=0.3, stall=0.15, garbage=2.0)


def stored_ids(symbol: str = "BTCUSDT") -> list[int]:
    return list(PriceUpdate.objects.filter(ticker_symbol=symbol, channel=TRADE)
                .order_by("trade_id").values_list("trade_id", flat=True))


def stored_at_least(count: int) -> bool:
    return len(stored_ids()) >= count


def assert_stored_equals_record(exchange: FakeExchange, symbol: str = "BTCUSDT", at_least: int = 1) -> None:
    """The stored rows are one unbroken run of the exchange's record, value for value."""
    rows = list(PriceUpdate.objects.filter(ticker_symbol=symbol, channel=TRADE).order_by("trade_id"))
    assert len(rows) >= at_least
    record = {t.trade_id: t for t in exchange.record(symbol)}
    ids = [row.trade_id for row in rows]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "a gap or a duplicate in the stored ids"
    for row in rows:
        made: Trade = record[row.trade_id]
        assert (row.price, row.volume, row.is_market_maker) == (made.price, made.quantity, made.is_buyer_maker)
        assert row.trade_time == in_micros(made).trade_time


@pytest.mark.parametrize("batch_args", [[], ["--batch-size", "50"]], ids=["immediate", "batched"])
def test_it_stores_exactly_the_exchanges_record_through_faults(batch_args: list[str]) -> None:
    with running_exchange(symbols={"BTCUSDT": 120.0}, seed=5, faults=FAULTY) as ex:
        result = manage("binance_websocket_client", "--symbol", "btcusdt", "--limit", "700", *batch_args,
                        env=command_env(ex), timeout=120)
        faults = ex.stats.faults
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stored 700 trades" in result.stdout
    assert_stored_equals_record(ex, at_least=700)
    assert sum(faults.values()) >= 3, f"too few faults happened to prove anything: {faults}"


def test_it_stores_on_sqlite_what_sqlite_can_keep(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with running_exchange(symbols={"BTCUSDT": 150.0}, seed=6, faults=FaultRates(drop=0.3, garbage=2.0)) as ex:
        env = command_env(ex, DATABASE_URL=f"sqlite:///{path}")
        assert manage("migrate", "--noinput", env=env).returncode == 0
        result = manage("binance_websocket_client", "--limit", "400", "--batch-size", "40", env=env, timeout=120)
        record = {t.trade_id: t for t in ex.record("BTCUSDT")}
    assert result.returncode == 0, result.stderr[-3000:]
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT trade_id, price, volume, is_market_maker FROM streams_priceupdate "
                          "ORDER BY trade_id").fetchall()
    ids = [row[0] for row in rows]
    assert len(ids) == 400 and ids == list(range(ids[0], ids[0] + 400))
    for trade_id, price, volume, maker in rows:
        made = record[trade_id]
        # REAL keeps ~15 significant digits: exact for these 8-decimal values of modest size.
        assert Decimal(str(price)) == made.price and Decimal(str(volume)) == made.quantity
        assert bool(maker) is made.is_buyer_maker


def test_resume_backfills_the_trades_made_while_it_was_not_running(exchange: FakeExchange) -> None:
    env = command_env(exchange)
    first = manage("binance_websocket_client", "--limit", "60", "--batch-size", "20", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    last = stored_ids()[-1]
    wait_for(lambda: exchange.record("BTCUSDT")[-1].trade_id >= last + 300)  # the market goes on meanwhile
    second = manage("binance_websocket_client", "--resume", "--limit", "400", "--batch-size", "100", env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    ids = stored_ids()
    assert ids[0] == last - 59 and len(ids) == 460
    assert_stored_equals_record(exchange, at_least=460)


def test_the_database_going_away_mid_run_loses_nothing(exchange: FakeExchange) -> None:
    with tcp_proxy(settings.DATABASES["default"]["HOST"], int(settings.DATABASES["default"]["PORT"])) as proxy:
        env = command_env(exchange, DATABASE_URL=database_url(proxy.port), DATABASE_CONN_MAX_AGE="0")
        process = start_manage("binance_websocket_client", "--limit", "800", "--batch-size", "25", env=env)
        try:
            wait_for(lambda: len(stored_ids()) >= 100)
            proxy.cut()
            cut_at = len(stored_ids())
            wait_for(lambda: exchange.record("BTCUSDT")[-1].trade_id > stored_ids()[-1] + 200)  # ~2 s away
            assert len(stored_ids()) == cut_at  # nothing got through while it was away
            proxy.restore()
            out, err = process.communicate(timeout=120)
        finally:
            process.kill()
    assert process.returncode == 0, err[-3000:]
    assert "stored 800 trades" in out
    assert "database errors 0" not in out  # the outage was seen, and ridden out
    assert_stored_equals_record(exchange, at_least=800)


def terminate_other_sessions() -> int:
    """What a PostgreSQL restart does to its clients (FATAL 57P01 admin_shutdown), to every session of the
    test database but this one."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return int(cursor.fetchone()[0])


def test_batch_mode_rides_out_the_database_shutting_its_sessions_down(exchange: FakeExchange) -> None:
    # Today's main: AdminShutdown, raised raw by psycopg inside COPY, ended the writer task; close() then
    # raised, and the command died with a traceback, against what docs/operating.md promises.
    env = command_env(exchange, DATABASE_CONN_MAX_AGE="600")  # one session, kept between writes
    process = start_manage("binance_websocket_client", "--limit", "900", "--batch-size", "25", env=env)
    try:
        for seen in (100, 300, 500):
            wait_for(partial(stored_at_least, seen))
            wait_for(terminate_other_sessions)  # at least one session of the command was cut
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err[-3000:]
    assert "stored 900 trades" in out
    assert "AdminShutdown" in err  # seen, said once per outage, and ridden out
    assert_stored_equals_record(exchange, at_least=900)


def test_sigterm_flushes_what_it_holds_and_exits_cleanly(exchange: FakeExchange) -> None:
    process = start_manage("binance_websocket_client", "--batch-size", "100000", "--flush-interval", "3600",
                           env=command_env(exchange))
    try:
        wait_for(lambda: exchange.active_connections("btcusdt@trade") == 1)
        first_seen = exchange.record("BTCUSDT")[-1].trade_id
        wait_for(lambda: exchange.record("BTCUSDT")[-1].trade_id >= first_seen + 100)
        assert stored_ids() == []  # all of it is still in the batch, in memory
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err[-3000:]
    count = len(stored_ids())
    assert count >= 100
    assert f"stored {count:,} trades" in out
    assert_stored_equals_record(exchange, at_least=100)


def test_stored_batches_reach_the_binance_data_group(exchange: FakeExchange) -> None:
    async def listen() -> list[int]:
        layer = RedisChannelLayer(hosts=[{"address": settings.REDIS_URL, "socket_timeout": None}])
        channel = await layer.new_channel()
        await layer.group_add(ALL_TRADES_GROUP, channel)
        process = start_manage("binance_websocket_client", "--limit", "90", "--batch-size", "30",
                               env=command_env(exchange))
        received: list[int] = []
        try:
            async with asyncio.timeout(60):
                while len(received) < 90:
                    message = await layer.receive(channel)
                    assert message["type"] == "trades.batch"
                    batch = json.loads(message["trades"])  # one JSON text, forwarded to browsers as it is
                    assert len(batch) == message["count"]
                    received.extend(trade["trade_id"] for trade in batch)
        finally:
            await asyncio.to_thread(process.communicate, timeout=60)
            await layer.group_discard(ALL_TRADES_GROUP, channel)
            await layer.flush()
        return received

    received = asyncio.run(listen())
    assert received == stored_ids()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--symbol", "nosuchcoin"], "unknown symbol 'NOSUCHCOIN'"),
        (["--symbol", "btc-usdt"], "invalid symbol 'btc-usdt'"),
        (["--channel", "depth"], "invalid channel 'depth'"),
        (["--batch-size", "-5"], "argument --batch-size: must be at least 1, got -5"),
        (["--limit", "0"], "argument --limit: must be at least 1, got 0"),
        (["--limit", "many"], "argument --limit: must be a whole number, got 'many'"),
    ],
)
def test_bad_input_gets_a_clear_message(exchange: FakeExchange, args: list[str], message: str) -> None:
    result = manage("binance_websocket_client", *args, env=command_env(exchange))
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert stored_ids() == []
