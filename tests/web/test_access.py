"""/status/, /api/streams/ and /metrics are for staff and the metrics token only, unless STATUS_PUBLIC opens
the first two; /healthz is open and says only what is down."""

from __future__ import annotations

import hmac
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import DatabaseError
from django.test import Client

from workers.keys import BEAT_SEEN
from workers.redis import sync_redis
from workers.registry import enable_stream
from workers.status import server_time

pytestmark = pytest.mark.django_db

TOKEN = "k3Jd9-Qx_2vLp8RtZ0aWmN4sYcE7uHbF1gT6oI5"
INTERNAL = ["/status/", "/api/streams/", "/metrics"]


@pytest.fixture
def token(settings: Any) -> str:
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


@pytest.fixture
def stream(clean_redis: None) -> None:
    enable_stream("BTCUSDT", "trade")


@pytest.mark.parametrize("path", INTERNAL)
def test_anonymous_clients_are_refused(stream: None, token: str, path: str) -> None:
    response = Client().get(path)
    if path == "/status/":  # a browser: to the admin's login, and back
        assert response.status_code == 302 and response["Location"] == "/admin/login/?next=/status/"
    else:
        assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert b"btcusdt" not in response.content


@pytest.mark.parametrize("path", INTERNAL)
def test_staff_may_see_them(stream: None, path: str) -> None:
    client = Client()
    assert client.get(path).status_code in (302, 401)
    client.force_login(User.objects.create_user("ops", password="not-used-here-7Q", is_staff=True))
    response = client.get(path)
    assert response.status_code == 200 and b"btcusdt@trade" in response.content


@pytest.mark.parametrize("path", INTERNAL)
def test_a_logged_in_user_who_is_not_staff_is_refused(stream: None, path: str) -> None:
    client = Client()
    client.force_login(User.objects.create_user("viewer", password="not-used-here-7Q"))
    assert client.get(path).status_code in (302, 401)


@pytest.mark.parametrize("path", INTERNAL)
def test_the_metrics_token_opens_them(stream: None, token: str, path: str) -> None:
    assert Client().get(path).status_code in (302, 401)
    response = Client().get(path, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200 and b"btcusdt@trade" in response.content


@pytest.mark.parametrize("path", INTERNAL)
@pytest.mark.parametrize("header", [f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}", TOKEN])
def test_a_wrong_token_is_refused(stream: None, token: str, path: str, header: str) -> None:
    response = Client().get(path, HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert b"btcusdt" not in response.content


def test_without_a_configured_token_no_bearer_opens_them(stream: None, settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


def test_the_token_is_compared_in_constant_time(stream: None, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    compare_digest = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module web.access calls
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer short").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    # Both comparisons went through compare_digest, on digests of one length: a short guess takes as long.
    assert len(compared) == 2 and {len(a) for a, _ in compared} == {len(b) for _, b in compared} == {32}


def test_status_public_opens_the_status_pages_but_not_the_metrics(stream: None, settings: Any) -> None:
    settings.STATUS_PUBLIC = True
    assert Client().get("/status/").status_code == 200
    assert Client().get("/api/streams/").status_code == 200
    assert Client().get("/metrics").status_code == 401


def test_healthz_names_no_host_port_or_user_when_the_database_is_down(clean_redis: None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sync_redis().set(BEAT_SEEN, f"{server_time(sync_redis()):.3f}")

    def refuse(*args: object, **kwargs: object) -> None:
        raise DatabaseError('connection to server at "10.1.2.3", port 6432 failed: FATAL: role "collector" '
                            "does not exist")

    from django.db import connection

    monkeypatch.setattr(connection, "cursor", refuse)
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"ok": False, "problems": ["database: down"]}
