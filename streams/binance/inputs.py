"""Values typed by people (command-line arguments, environment variables), parsed strictly.

Pure functions, no Django: the standalone client, the one-off command and the settings share them. Each
raises `ValueError` with a message that names the value; callers add the argument or variable's name.
Python's own parsers are too lenient for this: `int()` takes `"١٢"` (Arabic-Indic digits) and `"1_000"`,
`str.isdigit()` is true for `"²"` which `int()` then refuses, and `float()` takes `"nan"` and `"inf"`.
"""

from __future__ import annotations

import math
import re
from urllib.parse import urlsplit

WS_SCHEMES = ("ws", "wss")
HTTP_SCHEMES = ("http", "https")

_WHOLE = re.compile(r"-?[0-9]+")  # ASCII digits only (re's [0-9] matches no other digit)
_NUMBER = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


def whole_number(text: str) -> int:
    """An integer written in ASCII digits, optionally negative."""
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def seconds(text: str, *, minimum: float = 0.0, inclusive: bool = True) -> float:
    """A finite number of seconds (plain decimal notation), at least `minimum` (above it if not inclusive)."""
    if not _NUMBER.fullmatch(text) or not math.isfinite(value := float(text)):
        raise ValueError(f"{text!r} is not a finite number of seconds")
    if value < minimum or (value == minimum and not inclusive):
        raise ValueError(f"{text!r} must be {'at least' if inclusive else 'more than'} {minimum:g} seconds")
    return value


def endpoint_url(text: str, schemes: tuple[str, ...]) -> str:
    """An absolute URL with one of `schemes`, a host, a valid port, no credentials, query or fragment."""
    wanted = " or ".join(f"{s}://" for s in schemes)
    if not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError(f"{text!r} is not a URL ({wanted}...)")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a port that is not a number in 0..65535
    except ValueError:
        raise ValueError(f"{text!r} is not a URL ({wanted}...)") from None
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"{text!r} does not start with {wanted}")
    if not parts.hostname or port == 0:
        raise ValueError(f"{text!r} has no host (expected {parts.scheme}://host[:port])")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError(f"{text!r} must be a base URL, without credentials, query or fragment")
    return text
