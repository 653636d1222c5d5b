"""/api/streams/, /metrics and /healthz on the real Redis and database."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from streams.binance.streamid import StreamId
from streams.fake.proxy import tcp_proxy
from workers.keys import BEAT_SEEN
from workers.redis import sync_redis
from workers.registry import enable_stream
from workers.status import StreamStatus, server_time, write_status_now

pytestmark = pytest.mark.django_db


def staff() -> Client:
    """/api/streams/ and /metrics are for staff or the metrics token (tests/web/test_access.py)."""
    client = Client()
    client.force_login(User.objects.get_or_create(username="ops", defaults={"is_staff": True})[0])
    return client


def report_status(sid: str, **fields: Any) -> None:
    values: dict[str, Any] = {"state": "connected", "worker": "w1", "last_frame_age": 0.1, "trades": 42,
                              "reconnects": 1, "gaps_healed": 2, "lag_ms": 15}
    values.update(fields)
    write_status_now(sync_redis(), StreamId.parse(sid), StreamStatus(**values), ttl=60)


def test_a_stalled_stream_shows_as_stalled(clean_redis: None, settings: Any) -> None:
    settings.COLLECTOR_STALE_AFTER = 5.0
    enable_stream("BTCUSDT", "trade")
    enable_stream("ETHUSDT", "trade")
    enable_stream("BNBUSDT", "trade")
    report_status("btcusdt@trade")
    report_status("ethusdt@trade", last_frame_age=60.0)  # open socket, nothing for a minute
    report_status("xrpusdt@trade", stuck_for=30.0)  # frames arrive, but trades wait and nothing is handed on
    body = staff().get("/api/streams/").json()
    states = {entry["stream"]: entry["state"] for entry in body["streams"]}
    enable_stream("XRPUSDT", "trade")
    assert states == {"btcusdt@trade": "connected", "ethusdt@trade": "stalled", "bnbusdt@trade": "not running",
                      "xrpusdt@trade": "stalled"}
    btc = next(e for e in body["streams"] if e["stream"] == "btcusdt@trade")
    assert (btc["trades"], btc["reconnects"], btc["gaps_healed"], btc["worker"]) == (42, 1, 2, "w1")
    assert body["buffer"]["trades_waiting"] == 0


def test_metrics_parse_as_prometheus_text(clean_redis: None) -> None:
    enable_stream("BTCUSDT", "trade")
    report_status("btcusdt@trade")
    response = staff().get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    up = families["collector_stream_up"].samples[0]
    assert up.labels == {"stream": "btcusdt@trade"} and up.value == 1.0
    state = families["collector_stream_state"].samples[0]
    assert state.labels == {"stream": "btcusdt@trade", "state": "connected"} and state.value == 1.0
    assert families["collector_stream_lag_seconds"].samples[0].value == 0.015
    assert families["collector_buffer_trades"].samples[0].value == 0.0


def test_healthz_turns_503_when_redis_stops(clean_redis: None, settings: Any) -> None:
    with tcp_proxy("127.0.0.1", 6379) as proxy:
        settings.REDIS_URL = f"redis://127.0.0.1:{proxy.port}/15"
        sync_redis.cache_clear()
        try:
            sync_redis().set(BEAT_SEEN, f"{server_time(sync_redis()):.3f}")
            assert Client().get("/healthz").status_code == 200
            proxy.cut()
            response = Client().get("/healthz")
            assert response.status_code == 503
            # What is down, and nothing an anonymous client could use: no host, port or error text.
            assert response.json()["problems"] == ["redis: down"]
            assert str(proxy.port) not in response.content.decode()
        finally:
            sync_redis.cache_clear()


def test_healthz_says_when_the_beat_has_not_run(clean_redis: None) -> None:
    response = Client().get("/healthz")
    assert response.status_code == 503 and "beat" in response.json()["problems"][0]
