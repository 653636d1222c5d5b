"""Secure defaults: check --deploy is clean with the documented production environment, a weak
secret key stops start-up, the admin's login works behind a TLS proxy, passwords are validated and login
attempts throttled."""

from __future__ import annotations

import os
import re
import runpy
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.test import Client, override_settings

from project.env import env_header, env_origins, env_url, secret_problem
from project.envfiles import envfile_read

ROOT = Path(__file__).resolve().parents[2]
HOST = "collector.example.com"
PASSWORD = "a long and unusual passphrase 4-7"
# What the settings read, besides the production block: where the tests' services are.
KEEP = ("PATH", "HOME", "LANG", "DATABASE_URL", "REDIS_URL", "PYTHONPATH")


def documented_production_environment(tmp_path: Path) -> dict[str, str]:
    """docs/deployment.md's production block, with generated values where it says <generated>."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    block = re.search(r"<!-- production-environment[^>]*-->\n```sh\n(.*?)```", text, re.S)
    assert block, "docs/deployment.md lost its production environment block"
    (tmp_path / "production.env").write_text(block.group(1))
    values = envfile_read(tmp_path / "production.env")
    return {name: secrets.token_urlsafe(50) if value == "<generated>" else value for name, value in values.items()}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {name: os.environ[name] for name in KEEP if name in os.environ}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env}, capture_output=True,
                          text=True, timeout=120, check=False)


def test_check_deploy_is_clean_with_the_documented_production_environment(tmp_path: Path) -> None:
    env = documented_production_environment(tmp_path)
    result = run(["check", "--deploy", "--fail-level", "WARNING"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("change-me", "it is 9 characters long (at least 50 needed)"),
        ("ab" * 40, "it has only 2 distinct characters (at least 5 needed)"),
        ("change-me-" + secrets.token_urlsafe(50), "it contains the placeholder 'change-me'"),
        ("django-insecure-" + secrets.token_urlsafe(50), "it contains the placeholder 'insecure'"),
        ("dev-only-insecure-secret-key-do-not-use-in-production", "it contains the placeholder 'insecure'"),
    ],
)
def test_a_weak_secret_key_stops_start_up_in_one_line(tmp_path: Path, key: str, problem: str) -> None:
    env = {**documented_production_environment(tmp_path), "SECRET_KEY": key}
    result = run(["check"], env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: SECRET_KEY is too weak: {problem}; generate one with: "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'"]
    assert key not in result.stderr  # the secret itself is never printed
    development = run(["check"], {"DEBUG": "1", "SECRET_KEY": key})  # development keeps its convenience
    assert development.returncode == 0, development.stderr


def test_a_short_metrics_token_is_refused(tmp_path: Path) -> None:
    env = {**documented_production_environment(tmp_path), "METRICS_TOKEN": "letmein"}
    result = run(["check"], env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: METRICS_TOKEN is too weak: it is 7 characters long (at least 32 needed)")


def test_the_secret_rule() -> None:
    assert secret_problem(secrets.token_urlsafe(50)) == ""
    assert "characters long" in secret_problem("x" * 40 + "abcd")
    assert "distinct" in secret_problem("abcd" * 20)
    assert "placeholder 'example'" in secret_problem("Example-" + secrets.token_urlsafe(50))


def test_the_security_readers_refuse_what_django_would_misread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_ORIGINS", "https://a.example, http://localhost:8000, https://[::1]:8443")
    assert env_origins("X_ORIGINS") == ["https://a.example", "http://localhost:8000", "https://[::1]:8443"]
    monkeypatch.setenv("X_ORIGINS", "collector.example.com")  # no scheme: Django would fail every POST
    with pytest.raises(ImproperlyConfigured, match=r"X_ORIGINS: 'collector\.example\.com' is not an origin"):
        env_origins("X_ORIGINS")
    monkeypatch.setenv("X_HEADER", "X-Forwarded-Proto")
    assert env_header("X_HEADER") == ("HTTP_X_FORWARDED_PROTO", "https")
    monkeypatch.setenv("X_HEADER", "X-Forwarded-Proto: https")
    with pytest.raises(ImproperlyConfigured, match="is not a header name"):
        env_header("X_HEADER")
    monkeypatch.setenv("X_URL", "http://127.0.0.1:9443")
    with pytest.raises(ImproperlyConfigured, match=r"X_URL: 'http://127.0.0.1:9443' does not start with ws:// or wss://"):
        env_url("X_URL", "", ("ws", "wss"))


SECURITY_SETTINGS = ("ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT",
                     "SECURE_REDIRECT_EXEMPT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
                     "SECURE_HSTS_PRELOAD", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE")


@pytest.fixture
def production(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The settings that the documented production environment gives, applied to this process."""
    for name, value in documented_production_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    values = runpy.run_path(str(ROOT / "project" / "settings.py"))
    chosen = {name: values[name] for name in SECURITY_SETTINGS}
    with override_settings(**chosen):
        yield chosen


def login(client: Client, *, host: str, origin: str, username: str = "boss", password: str = PASSWORD,
          secure: bool = True) -> Any:
    proxy: dict[str, Any] = {"HTTP_X_FORWARDED_PROTO": "https"} if secure else {}
    page = client.get("/admin/login/", HTTP_HOST=host, **proxy)
    assert page.status_code == 200, page.status_code
    token = client.cookies["csrftoken"].value
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password,
                                                      "csrfmiddlewaretoken": token, "next": "/admin/"},
                       HTTP_HOST=host, HTTP_ORIGIN=origin, HTTP_REFERER=f"{origin}/admin/login/", **proxy)


@pytest.fixture(autouse=True)
def fast_hashing(settings: Any) -> None:
    """Hashing is not what these tests are about: PBKDF2's million rounds cost seconds per login here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def boss(db: None) -> User:
    return User.objects.create_superuser("boss", "boss@example.com", PASSWORD)


def test_behind_a_tls_proxy_the_admin_login_works(boss: User, production: dict[str, Any],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # What went wrong before: without the proxy's header Django takes the request for plain HTTP, and
    # https://host for a foreign origin.
    with override_settings(SECURE_PROXY_SSL_HEADER=None, SECURE_SSL_REDIRECT=False, CSRF_TRUSTED_ORIGINS=[]):
        refused = login(Client(enforce_csrf_checks=True), host=HOST, origin=f"https://{HOST}")
    assert refused.status_code == 403 and "Origin checking failed" in caplog.text
    response = login(Client(enforce_csrf_checks=True), host=HOST, origin=f"https://{HOST}")
    assert response.status_code == 302 and response["Location"] == "/admin/", response.content[:300]
    assert response.cookies["sessionid"]["secure"] and response.cookies["sessionid"]["httponly"]
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"


def test_behind_a_proxy_that_rewrites_the_host_the_trusted_origin_lets_the_login_through(
        boss: User, production: dict[str, Any]) -> None:
    with override_settings(ALLOWED_HOSTS=[HOST, "127.0.0.1"]):
        response = login(Client(enforce_csrf_checks=True), host="127.0.0.1:8000", origin=f"https://{HOST}")
    assert response.status_code == 302 and response["Location"] == "/admin/"


def test_plain_http_is_redirected_except_the_health_probe(db: None, production: dict[str, Any]) -> None:
    client = Client()
    response = client.get("/admin/login/", HTTP_HOST=HOST)
    assert response.status_code == 301 and response["Location"] == f"https://{HOST}/admin/login/"
    assert client.get("/healthz", HTTP_HOST=HOST).status_code in (200, 503)


@pytest.mark.parametrize("password", ["change-me", "admin", "password1234", "31415926535897", "boss@example.com"])
def test_weak_passwords_are_refused(boss: User, password: str) -> None:
    with pytest.raises(ValidationError):
        validate_password(password, user=boss)
    validate_password(secrets.token_urlsafe(16), user=boss)  # while a strong one passes


def test_login_attempts_are_throttled_per_username_and_address(boss: User, settings: Any) -> None:
    limit = settings.AXES_FAILURE_LIMIT
    client = Client()
    for _ in range(limit - 1):
        response = client.post("/admin/login/?next=/admin/", {"username": "boss", "password": "wrong guess 12345"})
        assert response.status_code == 200  # the form again, with its error
    last = client.post("/admin/login/?next=/admin/", {"username": "boss", "password": "wrong guess 12345"})
    assert last.status_code == 429
    locked = client.post("/admin/login/?next=/admin/", {"username": "boss", "password": PASSWORD})
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    # Another address still gets in: the lock is on the pair, so an attacker cannot lock the admin out.
    other = Client(REMOTE_ADDR="192.0.2.7")
    response = other.post("/admin/login/?next=/admin/", {"username": "boss", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/admin/"
