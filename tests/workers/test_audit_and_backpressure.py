"""The gap audit fills holes from REST; a full buffer holds the stream (saying so) and loses nothing."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest

from streams.binance.protocol import TRADE
from streams.fake.exchange import running_exchange
from streams.models import PriceUpdate
from streams.storage import store_trades
from tests.helpers import wait_for
from workers import listing
from workers.audit import fill_holes, holes
from workers.buffer import buffer_stats, flush_all
from workers.keys import REST_WEIGHT, stream_id
from workers.models import AuditMark
from workers.redis import sync_redis
from workers.runtime import Runtime, ShutdownSignal
from workers.status import read_status

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_audit_finds_holes_and_fills_them_from_rest(settings: Any) -> None:
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=71) as ex:
        settings.BINANCE_REST_URL = ex.rest_url
        made = ex.make_trades("BTCUSDT", 300)
        kept = made[:50] + made[60:61] + made[90:200] + made[250:]  # three holes: 10, 29 and 50 trades
        store_trades(kept)
        found = holes("BTCUSDT", TRADE, made[0].trade_id, made[-1].trade_id)
        assert [(g.first, g.last) for g in found] == [
            (made[50].trade_id, made[59].trade_id), (made[61].trade_id, made[89].trade_id),
            (made[200].trade_id, made[249].trade_id)]
        assert fill_holes("BTCUSDT", TRADE) == (3, 89)
    ids = list(PriceUpdate.objects.order_by("trade_id").values_list("trade_id", flat=True))
    assert ids == [t.trade_id for t in made]
    assert holes("BTCUSDT", TRADE, made[0].trade_id, made[-1].trade_id) == []
    assert AuditMark.objects.get(stream="btcusdt@trade").verified_through == made[-1].trade_id


def test_the_audit_fills_holes_far_behind_the_newest_ids_and_never_leaves_one_behind(settings: Any) -> None:
    # A long outage leaves a hole that the stream has long moved past: today's main looked only at the
    # newest 100,000 ids and kept that hole for ever. The watermark walks the whole range, a slice a pass.
    settings.COLLECTOR_AUDIT_SCAN = 50_000
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=73) as ex:
        settings.BINANCE_REST_URL = ex.rest_url
        made = ex.make_trades("BTCUSDT", 160_000)
        store_trades(made[:100] + made[130:60_000] + made[60_020:])  # holes at ids +100 and +60,000
        passes = [fill_holes("BTCUSDT", TRADE) for _ in range(4)]
    assert passes[0] == (1, 30) and passes[1] == (1, 20) and passes[2:] == [(0, 0), (0, 0)]
    assert PriceUpdate.objects.count() == 160_000
    assert AuditMark.objects.get(stream="btcusdt@trade").verified_through == made[-1].trade_id


def test_a_hole_wider_than_the_scanned_slice_is_found_whole(settings: Any) -> None:
    settings.COLLECTOR_AUDIT_SCAN = 1_000
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=74) as ex:
        settings.BINANCE_REST_URL = ex.rest_url
        made = ex.make_trades("BTCUSDT", 5_000)
        store_trades(made[:10] + made[2_500:])  # one hole of 2,490 ids, wider than a slice
        assert fill_holes("BTCUSDT", TRADE) == (1, 2_490)
        assert AuditMark.objects.get(stream="btcusdt@trade").verified_through == made[2_500].trade_id
    assert PriceUpdate.objects.count() == 5_000


def test_a_full_buffer_holds_the_stream_says_so_and_loses_nothing(fast_settings: Any, clean_redis: None) -> None:
    fast_settings.COLLECTOR_BUFFER_MAX_TRADES = 200
    shutdown = ShutdownSignal()
    sid = stream_id("BTCUSDT", TRADE)
    with running_exchange(symbols={"BTCUSDT": 150.0}, seed=72) as ex:
        fast_settings.BINANCE_WS_URL, fast_settings.BINANCE_REST_URL = ex.ws_url, ex.rest_url
        runtime = Runtime(shutdown)
        runner = threading.Thread(target=lambda: runtime.run_stream(sid, owner="test:1"), daemon=True)
        runner.start()
        try:
            # Nobody flushes: the buffer fills to its bound, and the status shows the alarm.
            wait_for(lambda: getattr(read_status(sid), "state", None) == "waiting for buffer room", timeout=30)
            assert buffer_stats(sync_redis())["trades_waiting"] < 200 + 5_000  # bound plus one hand-over at most
            held_at = ex.record("BTCUSDT")[-1].trade_id
            # The database catches up: everything waiting, and what was held back since, gets stored.
            wait_for(lambda: flush_all(sync_redis(), "test").trades == 0 and PriceUpdate.objects.filter(
                trade_id__gt=held_at + 150).exists(), timeout=60)
        finally:
            shutdown.set()
            runner.join(timeout=30)
            runtime.close()
        flush_all(sync_redis(), "test")
        record = {t.trade_id: t for t in ex.record("BTCUSDT")}
    ids = list(PriceUpdate.objects.order_by("trade_id").values_list("trade_id", flat=True))
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # no gap, no duplicate
    assert all(i in record for i in ids) and len(ids) > 300


def weight_in_window() -> int:
    """The REST weight the shared budget holds for the current window (workers.budget), over every process."""
    members = cast("list[bytes]", sync_redis().zrange(REST_WEIGHT, 0, -1))  # without scores: the members
    return sum(int(member.rsplit(b":", 1)[1]) for member in members)


def test_the_audits_rest_requests_draw_on_the_budget_the_streams_share(settings: Any, clean_redis: None) -> None:
    # The audit healed holes with a REST client of its own, its weight unseen by the streams' shared window:
    # 200 gaps healing while the audit ran could take the IP over the exchange's limit.
    with running_exchange(symbols={"BTCUSDT": 0.0}, seed=72) as ex:
        settings.BINANCE_REST_URL = ex.rest_url
        made = ex.make_trades("BTCUSDT", 120)
        store_trades(made[:10] + made[20:60] + made[100:])  # two holes: two historicalTrades pages
        assert fill_holes("BTCUSDT", TRADE) == (2, 50)
        assert weight_in_window() >= 2 * 25
        listing.listing(["BTCUSDT"])  # the hourly listing check, exchangeInfo: 20 more
        assert weight_in_window() >= 2 * 25 + 20
