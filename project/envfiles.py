"""Env files: `NAME=value` lines, as honcho and docker compose read them; adding generated values; and the
env file that the project's settings read in a process started by hand.

`make run` gives its processes the environment of its profile (project/launcher/profiles.py: make run's
defaults, `.env`, then the environment). A command typed in a shell (`.venv/bin/python manage.py streams
enable btcusdt`, `.venv/bin/celery -A project worker`) gets the same from `env_file_load`, which
project/settings.py calls first: the values of `.env` (or of the file that ENV_FILE names) and make run's
defaults, each only where the environment does not set it already. ENV_FILE set but empty reads nothing:
`make run` sets it so for its processes (their environment is whole already; a demo process must never
read the real service's `.env`), and the tests set it so (a test must never pick up a developer's `.env`).
Only the project's own settings read it: a process whose DJANGO_SETTINGS_MODULE names other settings (the
tests') reads nothing. Standard library only: `make run` imports this with the system Python.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout
DEFAULT_ENV_FILE = ROOT / ".env"
# make run's defaults, below its env file and the environment: a checkout is a development one until its
# .env or the environment says DEBUG=0 (then SECRET_KEY is required, and make run generates one).
RUN_DEFAULTS = {"DEBUG": "1"}
SETTINGS = "project.settings"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "$": "$"}


class EnvFileError(ValueError):
    """A line that is not `NAME=value`: a typo in an env file must not be skipped in silence."""


def envfile_parse(text: str, source: str = "env file") -> dict[str, str]:
    """`NAME=value` per line; `#` comments, `export ` prefixes and single or double quotes allowed."""
    values: dict[str, str] = {}
    for number, text_line in enumerate(text.splitlines(), start=1):
        line = text_line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, raw = line.removeprefix("export ").partition("=")
        if not sep or not _NAME.fullmatch(name.strip()):
            raise EnvFileError(f"{source}:{number}: not NAME=value: {line[:60]!r}")
        values[name.strip()] = _value(raw.strip(), f"{source}:{number}")
    return values


def envfile_read(path: Path) -> dict[str, str]:
    """The values of the file at `path`; an absent file holds none."""
    if not path.exists():
        return {}
    return envfile_parse(path.read_text(encoding="utf-8"), str(path))


def envfile_add(path: Path, values: dict[str, str], comment: str, header: str = "") -> None:
    """Write `values` into the file (created private, mode 600, with `header`), filling an empty `NAME=` line
    in place or appending after `# comment`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text(encoding="utf-8") if path.exists() else header
    for name, value in values.items():
        empty = re.compile(rf"^(export )?{name}=[ \t]*(#.*)?$", re.MULTILINE)
        text, filled = empty.subn(f"{name}={value}", text, count=1)
        if not filled:
            text += ("" if not text or text.endswith("\n") else "\n") + f"# {comment}\n{name}={value}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _value(raw: str, where: str) -> str:
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        end = _closing_quote(raw, quote)
        if end < 0:
            raise EnvFileError(f"{where}: unterminated {quote} quote")
        inner = raw[1:end]
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[0]), inner) if quote == '"' else inner
    return re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()  # `value   # comment`, as in .env.example


def _closing_quote(raw: str, quote: str) -> int:
    index = 1
    while index < len(raw):
        if raw[index] == "\\" and quote == '"':
            index += 2
            continue
        if raw[index] == quote:
            return index
        index += 1
    return -1


def env_file_path(environ: MutableMapping[str, str]) -> Path | None:
    """The env file a process started by hand reads: ENV_FILE (relative to the working directory), `.env`
    of the checkout when ENV_FILE is unset, none when it is empty."""
    named = environ.get("ENV_FILE")
    if named is None:
        return DEFAULT_ENV_FILE
    return Path(named).expanduser().resolve() if named.strip() else None


def env_file_load(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Fill `environ` from the env file and make run's defaults where it has no value yet (the environment
    wins, as under make run); the file read, or None. An absent `.env` is no error (a deployment that sets
    the environment itself); an absent file that ENV_FILE names is."""
    if environ.get("DJANGO_SETTINGS_MODULE", SETTINGS) != SETTINGS:
        return None
    path = env_file_path(environ)
    if path is None or (path == DEFAULT_ENV_FILE and not path.exists()):
        return None
    if not path.is_file():
        raise EnvFileError(f"ENV_FILE: {path} is not a file")
    for name, value in {**RUN_DEFAULTS, **envfile_read(path)}.items():
        environ.setdefault(name, value)
    return path
