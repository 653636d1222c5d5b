"""The admin's login behind the doors a real deployment opens, through the web process as the Procfile runs
it: a proxy header is trusted only from the addresses FORWARDED_ALLOW_IPS names, and wrong passwords are
throttled per user as well as per address."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from django.contrib.auth.models import User

from benchmarks.webprocess import free_port, start_web, wait_listening
from tests.helpers import database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PASSWORD = "a-long-and-right-password-7Q"


@contextmanager
def web(**extra: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "project.settings", "LOG_LEVEL": "WARNING",
           "DATABASE_URL": database_url(), "LOGIN_FAILURE_LIMIT": "5", **extra}
    if "FORWARDED_ALLOW_IPS" not in extra:
        env.pop("FORWARDED_ALLOW_IPS", None)
    process = start_web(port, env)
    try:
        wait_listening(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def log_in(base: str, username: str, password: str, forwarded_for: str | None = None) -> int:
    """POST the admin's login form as a browser would; the status (302: in, 200: the form again, 429: locked)."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    with httpx.Client(base_url=base, headers=headers, timeout=20) as client:
        form = client.get("/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token is not None, form.text[:300]
        answer = client.post("/admin/login/?next=/admin/", data={
            "csrfmiddlewaretoken": token[1], "username": username, "password": password, "next": "/admin/"})
        return answer.status_code


@pytest.fixture
def admin() -> User:
    return User.objects.create_superuser("boss", "boss@example.com", PASSWORD)


def test_a_forwarded_for_header_is_not_trusted_unless_configured(admin: User) -> None:
    # Seen: uvicorn trusted X-Forwarded-For from 127.0.0.1 by default; rotating it gave 8 wrong passwords and
    # then a login, each try from "another address".
    with web() as base:
        for n in range(8):
            assert log_in(base, "boss", "wrong", forwarded_for=f"203.0.113.{n}") in (200, 429)
        assert log_in(base, "boss", PASSWORD, forwarded_for="203.0.113.99") == 429


def test_behind_a_configured_proxy_each_client_is_its_own_address_and_a_user_is_throttled_everywhere(
        admin: User) -> None:
    with web(FORWARDED_ALLOW_IPS="127.0.0.1", LOGIN_USER_FAILURE_LIMIT="12") as base:
        assert [log_in(base, "boss", "wrong", forwarded_for="198.51.100.1") for _ in range(5)] == [200] * 4 + [429]
        assert log_in(base, "boss", PASSWORD, forwarded_for="198.51.100.1") == 429  # that address, for that user
        assert log_in(base, "boss", PASSWORD, forwarded_for="198.51.100.2") == 302  # another client is not locked
        # Many addresses, a few tries each (a distributed guess): the user's own limit stops it.
        for n in range(12):
            log_in(base, "boss", "wrong", forwarded_for=f"192.0.2.{n}")
        assert log_in(base, "boss", PASSWORD, forwarded_for="192.0.2.200") == 429
