"""Strict readers of environment variables: a bad value raises ImproperlyConfigured naming the variable."""

from __future__ import annotations

import os
import re

from django.core.exceptions import ImproperlyConfigured

from streams.binance.inputs import endpoint_url

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below its minimum {minimum}")
    return value


def env_days(name: str, default: int) -> int | None:
    """A whole number of days (at least 1), or `all` (None: no limit)."""
    raw = os.environ.get(name)
    if raw is not None and raw.strip().lower() == "all":
        return None
    value = env_int(name, default, minimum=1)
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below its minimum {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_url(name: str, default: str, schemes: tuple[str, ...]) -> str:
    """A base URL with one of `schemes` (streams.binance.inputs.endpoint_url: a host, a valid port, no credentials)."""
    try:
        return endpoint_url(os.environ.get(name, default), schemes)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from None


def env_origins(name: str) -> list[str]:
    """Comma-separated origins as browsers send them (`https://host[:port]`, no path), e.g. for
    CSRF_TRUSTED_ORIGINS; Django's own check only says that a scheme is missing, at the first request."""
    origins = env_list(name, [])
    for origin in origins:
        if not re.fullmatch(r"https?://(\*\.)?[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?",
                            origin):
            raise ImproperlyConfigured(f"{name}: {origin!r} is not an origin (https://host or https://host:port)")
    return origins


def env_header(name: str) -> tuple[str, str] | None:
    """SECURE_PROXY_SSL_HEADER from the name of the header a TLS proxy sets to `https` (`X-Forwarded-Proto`),
    as Django wants it: ("HTTP_X_FORWARDED_PROTO", "https"). Empty or unset: None."""
    header = os.environ.get(name, "").strip()
    if not header:
        return None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", header):
        raise ImproperlyConfigured(f"{name}={header!r} is not a header name (e.g. X-Forwarded-Proto)")
    return "HTTP_" + header.upper().replace("-", "_"), "https"


# Placeholders seen in examples and templates: refused as secrets whatever their length.
_PLACEHOLDERS = ("change-me", "changeme", "change_me", "insecure", "secret-key", "secret_key", "your-secret",
                 "placeholder", "example", "xxxxx", "12345")


def secret_problem(value: str, *, min_length: int = 50, min_distinct: int = 5) -> str:
    """Why `value` is too weak to be a secret ("" when it is fine): too short, too few distinct characters
    (Django's own W009 rule: 50 and 5), or a known placeholder."""
    lowered = value.lower()
    if len(value) < min_length:
        return f"is {len(value)} characters long (at least {min_length} needed)"
    if len(set(value)) < min_distinct:
        return f"has only {len(set(value))} distinct characters (at least {min_distinct} needed)"
    if placeholder := next((p for p in _PLACEHOLDERS if p in lowered), None):
        return f"contains the placeholder {placeholder!r}"
    return ""


def env_secret(name: str, default: str, *, min_length: int = 50) -> str:
    """A secret that is empty, or strong enough (secret_problem); the value never appears in the message."""
    value = os.environ.get(name, default)
    if value and (problem := secret_problem(value, min_length=min_length)):
        raise ImproperlyConfigured(f"{name} is too weak: it {problem}; generate one with: "
                                   f"python -c 'import secrets; print(secrets.token_urlsafe(50))'")
    return value
