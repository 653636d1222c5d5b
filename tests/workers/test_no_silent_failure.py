"""Every fault is survived, seen, or stops the stream loudly, with real workers, Redis, PostgreSQL.

Each test reproduces a failure seen on a real run of the service before this issue.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from streams.binance.protocol import TRADE
from streams.binance.rest import BinanceRest
from streams.fake.exchange import FakeExchange, running_exchange
from streams.fake.proxy import tcp_proxy
from streams.models import PriceUpdate
from tests.helpers import free_port, wait_for
from tests.workers.conftest import Beat
from tests.workers.test_supervision import assert_stored_run_equals_record, stored_ids
from tests.workers.test_worker_processes import celery_worker, drained
from workers.audit import audit_counts, check_regressions, fill_holes
from workers.buffer import flush_all
from workers.deadletters import BAD_FRAME, recent_dead_letters
from workers.keys import FAILURES, StreamId, counters_key, last_failure_key, lease_key, stream_id
from workers.redis import sync_redis, text
from workers.registry import enable_stream
from workers.status import read_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SID = stream_id("BTCUSDT", TRADE)


def owner(sid: StreamId = SID) -> str:
    value = sync_redis().get(lease_key(sid))
    return text(value) if value else ""


def point_at(settings_: Any, ex: FakeExchange) -> None:
    settings_.BINANCE_WS_URL, settings_.BINANCE_REST_URL = ex.ws_url, ex.rest_url


@contextmanager
def watching(check: Callable[[], object], every: float = 0.05) -> Iterator[list[BaseException]]:
    """Run `check` on a thread until the block ends; whatever it raises is collected for the test."""
    failures: list[BaseException] = []
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every):
            try:
                check()
            except Exception as exc:
                failures.append(exc)
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield failures
    finally:
        done.set()
        thread.join(timeout=10)


def at_most_one_connection(ex: FakeExchange, stream: str) -> Callable[[], None]:
    def check() -> None:
        active = ex.active_connections(stream)
        assert active <= 1, f"{active} connections for {stream} at once"
    return check


# --- 1. Supervised background work -----------------------------------------------------------------------

def test_an_unexpected_error_ends_the_task_loudly_and_the_stream_comes_back_whole(
        fast_settings: Any, celery_worker_threads: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Today's main: the backfill task died in silence, the stream held its live trades for ever, handed on
    # nothing, and its status said "connected".
    calls = {"n": 0}
    real_page = BinanceRest.trades_page

    async def page_failing_once(self: BinanceRest, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug nobody foresaw")
        return await real_page(self, *args, **kwargs)

    monkeypatch.setattr(BinanceRest, "trades_page", page_failing_once)
    with running_exchange(symbols={"BTCUSDT": 40.0}, seed=91) as ex:
        point_at(fast_settings, ex)
        enable_stream("BTCUSDT", TRADE)
        with Beat():
            wait_for(lambda: len(stored_ids("BTCUSDT")) >= 40, timeout=60)
            first = owner()
            ex.inject("stall", symbol="BTCUSDT")  # a silent connection, dropped by the client: a gap to backfill
            wait_for(lambda: sync_redis().hget(FAILURES, str(SID)) == b"1", timeout=30)
            assert sync_redis().hget(counters_key(SID), "task_failures") == b"1"
            assert "a bug nobody foresaw" in text(sync_redis().get(last_failure_key(SID)) or b"")
            wait_for(lambda: owner() not in ("", first), timeout=30)  # restarted by the supervisor
            made = ex.record("BTCUSDT")[-1].trade_id
            wait_for(lambda: stored_ids("BTCUSDT")[-1] > made + 40, timeout=60)
            wait_for(drained, timeout=30)
        assert_stored_run_equals_record(ex, "BTCUSDT", 100)
    logged = [r for r in caplog.records if "a bug nobody foresaw" in r.getMessage() and r.levelname == "ERROR"]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with its traceback
    assert getattr(logged[0], "stream", None) == str(SID) or "btcusdt@trade" in caplog.text


def test_a_task_that_cannot_confirm_its_lease_drops_its_connection_before_another_task_starts(
        fast_settings: Any, clean_redis: None, tmp_path: Path) -> None:
    # Today's main: one Redis error ended the heartbeat in silence; the task streamed on without a lease,
    # the supervisor started a second one, and the exchange had two connections for one stream.
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=92) as ex, tcp_proxy("127.0.0.1", 6379) as proxy:
        point_at(fast_settings, ex)
        enable_stream("BTCUSDT", TRADE)
        proxied = f"redis://127.0.0.1:{proxy.port}/{settings.REDIS_URL.rsplit('/', 1)[-1]}"
        with Beat(), celery_worker(ex, "streams", queues="streams", REDIS_URL=proxied,
                                   log=tmp_path / "streams.log"), \
                celery_worker(ex, "worker", queues="celery", log=tmp_path / "worker.log"):
            wait_for(lambda: ex.active_connections("btcusdt@trade") == 1, timeout=60)
            ex.make_trades("BTCUSDT", 5)
            wait_for(lambda: len(stored_ids("BTCUSDT")) == 5, timeout=30)
            with watching(at_most_one_connection(ex, "btcusdt@trade")) as failures:
                # A quiet stream (no trade to hand on) whose worker cannot reach Redis; the supervisor can.
                proxy.cut()
                wait_for(lambda: owner() == "", timeout=30)  # the lease expired: the stream is free again
                fenced = ex.active_connections("btcusdt@trade") == 0  # ...and its old task let go of it first
                proxy.restore()
                wait_for(lambda: owner() != "", timeout=60)  # the supervisor's new task
                wait_for(lambda: ex.active_connections("btcusdt@trade") == 1, timeout=30)
                ex.make_trades("BTCUSDT", 5)
                wait_for(lambda: len(stored_ids("BTCUSDT")) == 10, timeout=30)
                ex.make_trades("BTCUSDT", 5)
                wait_for(lambda: len(stored_ids("BTCUSDT")) == 15, timeout=30)
            assert not failures, failures[0]
            assert fenced, "the old task still held its exchange connection when its lease expired"
            wait_for(drained, timeout=30)
        assert_stored_run_equals_record(ex, "BTCUSDT", 15)


# --- 2. One poison value never stops storage --------------------------------------------------------------

def test_values_storage_cannot_hold_are_bad_frames_and_storage_goes_on(
        fast_settings: Any, celery_worker_threads: Any) -> None:
    # Today's main: an id of 2**63 was accepted, every flush then failed on it, and no symbol was stored again.
    with running_exchange(symbols={"BTCUSDT": 40.0}, seed=93) as ex:
        point_at(fast_settings, ex)
        enable_stream("BTCUSDT", TRADE)
        with Beat():
            wait_for(lambda: len(stored_ids("BTCUSDT")) >= 20, timeout=60)
            for variant in ("id_overflow", "price_overflow", "precision"):
                ex.inject("garbage", symbol="BTCUSDT", variant=variant)
            made = ex.record("BTCUSDT")[-1].trade_id
            wait_for(lambda: stored_ids("BTCUSDT")[-1] > made + 40, timeout=60)
            wait_for(lambda: getattr(read_status(SID), "parse_errors", 0) == 3, timeout=30)
            wait_for(lambda: len(recent_dead_letters(sync_redis())) == 3, timeout=30)
            wait_for(drained, timeout=30)
        assert_stored_run_equals_record(ex, "BTCUSDT", 60)
    letters = recent_dead_letters(sync_redis())
    assert {letter.kind for letter in letters} == {BAD_FRAME} and {letter.stream for letter in letters} == {str(SID)}


def test_ids_that_go_back_are_shown_and_the_audit_finds_them_replayed(
        fast_settings: Any, celery_worker_threads: Any) -> None:
    with running_exchange(symbols={"BTCUSDT": 40.0}, seed=94) as ex:
        point_at(fast_settings, ex)
        enable_stream("BTCUSDT", TRADE)
        with Beat():
            wait_for(lambda: len(stored_ids("BTCUSDT")) >= 40, timeout=60)
            ex.inject("replay", symbol="BTCUSDT", count=15)
            wait_for(lambda: getattr(read_status(SID), "ids_back", 0) == 15, timeout=30)
            wait_for(lambda: sync_redis().hget(counters_key(SID), "ids_back") == b"15", timeout=30)
            wait_for(lambda: sync_redis().llen("collector:id-regressions") == 15, timeout=30)
            wait_for(drained, timeout=30)
            assert check_regressions() == {"replayed": 15, "conflicts": 0, "unchecked": 0}
        assert audit_counts()["replayed"] == 15
        assert_stored_run_equals_record(ex, "BTCUSDT", 40)


# --- 1c. Bounded stops ------------------------------------------------------------------------------------

def test_sigterm_with_many_streams_and_an_exchange_gone_silent_ends_the_worker_in_bounded_time(
        fast_settings: Any, clean_redis: None, tmp_path: Path) -> None:
    # Today's main: 31 of 400 stream tasks never ended after SIGTERM while the exchange went away.
    symbols = [f"Q{i:02d}USDT" for i in range(40)]
    with running_exchange(symbols=dict.fromkeys(symbols, 4.0), seed=95) as ex:
        ws_host, ws_port = ex.ws_url.removeprefix("ws://").split(":")
        rest_host, rest_port = ex.rest_url.removeprefix("http://").split(":")
        with tcp_proxy(ws_host, int(ws_port)) as ws, tcp_proxy(rest_host, int(rest_port)) as rest:
            fast_settings.BINANCE_WS_URL = f"ws://127.0.0.1:{ws.port}"
            fast_settings.BINANCE_REST_URL = f"http://127.0.0.1:{rest.port}"
            for symbol in symbols:
                enable_stream(symbol, TRADE)
            env = {"BINANCE_WS_URL": fast_settings.BINANCE_WS_URL, "BINANCE_REST_URL": fast_settings.BINANCE_REST_URL,
                   "BINANCE_SILENCE_TIMEOUT": "5", "BINANCE_PROBE_TIMEOUT": "5"}
            with Beat(), celery_worker(ex, "worker", queues="celery", **env), \
                    celery_worker(ex, "streams", queues="streams", concurrency=48, log=tmp_path / "streams.log",
                                  **env) as streams:
                wait_for(lambda: all(ex.active_connections(f"{s.lower()}@trade") == 1 for s in symbols), timeout=90)
                wait_for(lambda: all(len(stored_ids(s)) >= 4 for s in symbols), timeout=90)
                ws.freeze()  # the exchange goes away without a word: nothing answers, nothing closes
                rest.freeze()
                streams.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                try:
                    code = streams.wait(timeout=30)  # Kubernetes' grace; the aim (15 s) is the benchmark's
                except subprocess.TimeoutExpired:
                    pytest.fail(f"the streams worker was still running 30 s after SIGTERM; its log: "
                                f"{(tmp_path / 'streams.log').read_text()[-3000:]}")
                took = time.monotonic() - sent
                assert code == 0, (tmp_path / "streams.log").read_text()[-3000:]
                assert not sync_redis().keys("collector:lease:*")  # every lease released
                flush_all(sync_redis(), "test")
    print(f"streams worker with {len(symbols)} streams exited {took:.1f} s after SIGTERM")
    for symbol in symbols:  # what was read was handed on: every stored run has no hole
        ids = stored_ids(symbol)
        assert ids == list(range(ids[0], ids[0] + len(ids))), symbol


# --- 3. Redis and the database come and go ----------------------------------------------------------------

@contextmanager
def private_redis(port: int, tmp_path: Path) -> Iterator[Callable[[], None]]:
    """A redis-server of the test's own (never the machine's); yields `restart_empty()`."""
    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(tmp_path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _answers(port), timeout=10)
        return process

    current = [start()]

    def restart_empty() -> None:
        current[0].kill()  # no persistence: everything it held is gone
        current[0].wait(timeout=10)
        current[0] = start()

    try:
        yield restart_empty
    finally:
        current[0].kill()
        current[0].wait(timeout=10)


def _answers(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def test_redis_restarted_empty_loses_no_trade_and_leaves_no_zombie(
        fast_settings: Any, clean_redis: None, tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with private_redis(port, tmp_path) as restart_empty, \
            running_exchange(symbols={"BTCUSDT": 40.0, "ETHUSDT": 0.0}, seed=96) as ex:
        point_at(fast_settings, ex)
        enable_stream("BTCUSDT", TRADE)
        enable_stream("ETHUSDT", TRADE)
        quiet = threading.Event()
        trader = threading.Thread(target=lambda: [ex.make_trades("ETHUSDT", 1) for _ in iter(
            lambda: quiet.wait(0.5), True)], daemon=True)
        trader.start()
        checks = [at_most_one_connection(ex, "btcusdt@trade"), at_most_one_connection(ex, "ethusdt@trade")]
        with Beat(broker=url), celery_worker(ex, "streams", queues="streams", REDIS_URL=url,
                                             log=tmp_path / "streams.log"), \
                celery_worker(ex, "worker", queues="celery", REDIS_URL=url, log=tmp_path / "worker.log"), \
                watching(lambda: [check() for check in checks]) as failures:
            wait_for(lambda: len(stored_ids("BTCUSDT")) >= 40 and len(stored_ids("ETHUSDT")) >= 3, timeout=60)
            restart_empty()
            made = {s: ex.record(s)[-1].trade_id for s in ("BTCUSDT", "ETHUSDT")}
            wait_for(lambda: all(stored_ids(s)[-1] > made[s] + 2 for s in made), timeout=90)
            quiet.set()
        assert not failures, failures[0]
        for symbol in ("BTCUSDT", "ETHUSDT"):  # what the buffer lost with Redis: the audit fills it
            fill_holes(symbol, TRADE)
        for symbol in ("BTCUSDT", "ETHUSDT"):
            rows = list(PriceUpdate.objects.filter(ticker_symbol=symbol).order_by("trade_id"))
            ids = [r.trade_id for r in rows]
            assert ids == list(range(ids[0], ids[0] + len(ids))), f"{symbol}: a hole or a duplicate"


# --- 4. One clock -----------------------------------------------------------------------------------------

def test_a_streams_host_whose_clock_is_70_s_behind_keeps_its_healthy_streams(
        fast_settings: Any, clean_redis: None, tmp_path: Path) -> None:
    # Today's main compared a heartbeat written on one host's clock with another host's clock: a host 70 s
    # behind had its healthy streams restarted at every supervision pass.
    skew = ("import time, time_machine", "time_machine.travel(time.time() - 70, tick=True).start()")
    with running_exchange(symbols={"BTCUSDT": 30.0}, seed=97) as ex:
        point_at(fast_settings, ex)
        enable_stream("BTCUSDT", TRADE)
        with Beat(), celery_worker(ex, "streams", queues="streams", python=skew, log=tmp_path / "streams.log"), \
                celery_worker(ex, "worker", queues="celery", log=tmp_path / "worker.log"):
            wait_for(lambda: len(stored_ids("BTCUSDT")) >= 30, timeout=60)
            first = owner()
            seen = len(stored_ids("BTCUSDT"))
            # Twice the stale limit, a dozen supervision passes: the stream must keep its one task.
            wait_for(lambda: len(stored_ids("BTCUSDT")) >= seen + 2 * 30 * 3, timeout=60)
            assert owner() == first
            assert ex.stats.connections_opened["btcusdt@trade"] == 1, (tmp_path / "worker.log").read_text()[-2000:]


def test_a_stopped_stream_never_has_its_resume_point_ahead_of_trades_still_held(
        fast_settings: Any, clean_redis: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen in the chaos test under load: one trade missing just before the streams were disabled. The pump
    # holds a batch while it gathers more (HAND_OFF_TICK); a stream stopped meanwhile had its newer trades
    # handed on first, with its resume point, and the older ones the pump held came after: a worker killed
    # in between left a hole behind the resume point that no task fetches again. Here the pump holds each
    # batch for a second, so a stop nearly always comes while it holds one.
    from workers import runtime as runtime_module
    from workers.keys import last_id_key, stop_key
    from workers.runtime import Runtime, ShutdownSignal

    monkeypatch.setattr(runtime_module, "HAND_OFF_TICK", 1.0)
    shutdown = ShutdownSignal()
    with running_exchange(symbols={"BTCUSDT": 200.0}, seed=76) as ex:
        point_at(fast_settings, ex)
        runtime = Runtime(shutdown)
        thread = threading.Thread(target=lambda: runtime.run_stream(SID, owner="test:1"), daemon=True)
        thread.start()
        try:
            wait_for(lambda: sync_redis().get(last_id_key(SID)) is not None, timeout=30)
            sync_redis().set(stop_key(SID), "*")  # what the supervisor does for a disabled stream
            thread.join(timeout=30)
            assert not thread.is_alive()
            # The task has ended: what it handed on must reach its resume point without a hole.
            handed = sync_redis().get(last_id_key(SID))
            assert handed is not None
            resume = int(handed)
            flush_all(sync_redis(), "test")
        finally:
            shutdown.set()
            runtime.close()
    ids = list(PriceUpdate.objects.order_by("trade_id").values_list("trade_id", flat=True))
    assert ids[-1] >= resume
    missing = sorted(set(range(ids[0], resume + 1)) - set(ids))
    assert not missing, f"{len(missing)} trades behind the resume point {resume} never handed on: {missing[:5]}..."
