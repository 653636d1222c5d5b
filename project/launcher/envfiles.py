"""Env files: `NAME=value` lines, as honcho and docker compose read them; and adding generated values."""

from __future__ import annotations

import os
import re
from pathlib import Path

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
