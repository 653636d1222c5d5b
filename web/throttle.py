"""The admin's login throttled per user as well as per address.

django-axes locks a (username, address) pair after LOGIN_FAILURE_LIMIT wrong passwords. Behind a proxy that
passes the clients' addresses (FORWARDED_ALLOW_IPS), a guess spread over many addresses never reaches that
limit for any pair: this backend, placed right after axes', refuses a username once LOGIN_USER_FAILURE_LIMIT
wrong passwords for it came from anywhere within LOGIN_COOLOFF, in the same way (axes' lockout answer, 429).
The per-user limit is higher than the per-pair one: a stranger can lock a username out for everyone, so it
is set where a guess would have to be distributed to get there.
"""

from __future__ import annotations

from typing import Any

from axes.exceptions import AxesBackendPermissionDenied
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest
from django.utils import timezone


class UserThrottleBackend:
    """An authentication backend that never authenticates: it only refuses a username that failed too often.
    It has no `get_user`, so that sessions (and the test client's force_login) go to the model backend."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, password: str | None = None,
                     **kwargs: Any) -> None:
        if request is None or not username:
            return
        if failures(username) >= settings.LOGIN_USER_FAILURE_LIMIT:
            request.axes_locked_out = True  # type: ignore[attr-defined]  # axes' middleware answers it (429)
            raise AxesBackendPermissionDenied(f"{username!r} failed {settings.LOGIN_USER_FAILURE_LIMIT} times")


def failures(username: str) -> int:
    """Wrong passwords for `username`, from every address, within the cool-off window."""
    since = timezone.now() - settings.AXES_COOLOFF_TIME
    recent = AccessAttempt.objects.filter(username=username, attempt_time__gte=since)
    return int(recent.aggregate(n=Sum("failures_since_start"))["n"] or 0)
