"""Who may see the internal pages (docs/security.md): /status/, /api/streams/, /api/coverage/ and /metrics.

A staff login (the admin's session), or `Authorization: Bearer <METRICS_TOKEN>` for a scraper; with
STATUS_PUBLIC=1, anyone for the pages that say so (a trusted network). Everyone else is refused: a browser
is sent to the admin's login, a program gets 401.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse

View = Callable[..., HttpResponse]


def bearer_token_matches(request: HttpRequest) -> bool:
    """The request carries `Authorization: Bearer <METRICS_TOKEN>`, compared in constant time."""
    expected: str = settings.METRICS_TOKEN
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    # Digests of equal length: compare_digest then takes the same time whatever the token, its length too.
    return hmac.compare_digest(hashlib.sha256(token.strip().encode()).digest(),
                               hashlib.sha256(expected.encode()).digest())


def may_see_internals(request: HttpRequest, *, public: bool) -> bool:
    user = getattr(request, "user", None)
    staff = user is not None and user.is_active and user.is_staff
    return public or staff or bearer_token_matches(request)


def refused() -> JsonResponse:
    """What a program that may not see an internal endpoint gets."""
    response = JsonResponse({"error": "a staff login or the metrics token is needed"}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="collector"'
    return response


def internal(*, html: bool = False, public_setting: str | None = None) -> Callable[[View], View]:
    """Decorate a view so that only staff, the token, or everyone when `public_setting` is on, see it."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def guarded(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            public = bool(public_setting and getattr(settings, public_setting))
            if may_see_internals(request, public=public):
                return view(request, *args, **kwargs)
            if html and "Authorization" not in request.headers:
                return redirect_to_login(request.get_full_path(), "admin:login")
            return refused()

        return guarded

    return decorate
