"""Flower, started safely: on 127.0.0.1 unless told otherwise, never without a real `user:password`.

Flower takes `--basic-auth=` (empty) and then lets `Authorization: Basic !` in (DESIGN, known traps), and
listens on every interface by default. Flower reads the login from FLOWER_BASIC_AUTH itself, so it is
checked here and never put on the command line, where `ps` would show it to every user of the machine.
Usage (the Procfiles): `python -m project.launcher.flower [flower options]`; it then runs `celery -A project flower`.
Started by hand, it reads .env first as the project's settings do (project/envfiles.py): Flower takes its
login from the environment before any setting is read.
"""

from __future__ import annotations

import os
import sys

from project.envfiles import EnvFileError, env_file_load

KNOWN_DEFAULT = "admin:change-me"  # what `make run` shipped before it generated a login
MIN_PASSWORD_LENGTH = 12  # as the admin's own password rule (settings.AUTH_PASSWORD_VALIDATORS)
# The words the most common passwords are built from: a password made of them and little else is refused.
_COMMON = ("password", "passwort", "admin", "flower", "celery", "changeme", "change-me", "secret", "letmein",
           "welcome", "qwerty", "123456", "abc123", "iloveyou", "monkey", "dragon", "master", "root", "guest",
           "test", "default")
_TRUE = {"1", "true", "yes", "on", "y", "t"}


def basic_auth_problem(value: str | None) -> str | None:
    """Why `value` is not a real `user:password` list (Flower splits it on commas), or None."""
    if value is None or not value.strip():
        return "FLOWER_BASIC_AUTH is not set: set it to user:password (make run generates one into .env)"
    for credential in value.split(","):
        user, colon, password = credential.partition(":")
        if not colon:
            return "FLOWER_BASIC_AUTH has no colon: set it to user:password"
        if not user.strip() or not password.strip():
            return "FLOWER_BASIC_AUTH has an empty user or password: set it to user:password"
        if credential.strip() == KNOWN_DEFAULT:
            return (f"FLOWER_BASIC_AUTH is the known default {KNOWN_DEFAULT}: set a real user:password, "
                    "or unset it (make run generates one into .env)")
        weakness = _weak(user.strip(), password.strip())
        if weakness:
            return f"FLOWER_BASIC_AUTH's password for {user.strip()!r} {weakness} (make run generates a strong one)"
    return None


def _weak(user: str, password: str) -> str | None:
    """Why a Flower password is too weak to guard the task list and its controls, or None: as for SECRET_KEY,
    a short or well-known value is refused rather than warned about."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"is {len(password)} characters long: at least {MIN_PASSWORD_LENGTH} characters are required"
    lowered = password.lower()
    if user and user.lower() in lowered and len(lowered) < 2 * MIN_PASSWORD_LENGTH:
        return "repeats the user name"
    if any(word in lowered for word in _COMMON) and len(set(lowered)) < MIN_PASSWORD_LENGTH:
        return "is too common (built from a well-known password)"
    return None


def flower_problem(argv: list[str], environ: dict[str, str]) -> str | None:
    """Why Flower must not start with these options and this environment, or None."""
    given = _option(argv, "--basic-auth")
    problem = basic_auth_problem(given if given is not None else environ.get("FLOWER_BASIC_AUTH"))
    unauthenticated = _option(argv, "--unauthenticated_api") or environ.get("FLOWER_UNAUTHENTICATED_API", "")
    if problem is None and unauthenticated.strip().lower() in _TRUE:
        problem = "FLOWER_UNAUTHENTICATED_API opens Flower's API to anyone: unset it"
    return problem


def flower_command(argv: list[str], environ: dict[str, str]) -> list[str]:
    """`celery -A project flower`, bound to FLOWER_ADDRESS or 127.0.0.1 unless `--address` is given."""
    address = environ.get("FLOWER_ADDRESS") or "127.0.0.1"
    bind = [] if _option(argv, "--address") is not None else [f"--address={address}"]
    return [sys.executable, "-m", "celery", "-A", "project", "flower", *bind, *argv]


def _option(argv: list[str], name: str) -> str | None:
    """The value of `--name=value` (tornado's syntax, with - or _) in argv, or None."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.replace("-", "_") == name.replace("-", "_"):
            return value
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        env_file_load()  # into os.environ: Flower, which this process becomes, reads it from there
    except EnvFileError as exc:
        print(f"flower: {exc}", file=sys.stderr)
        return 1
    environ = dict(os.environ)
    problem = flower_problem(args, environ)
    if problem:
        print(f"flower: refusing to start: {problem}", file=sys.stderr)
        return 1
    command = flower_command(args, environ)
    os.execv(command[0], command)  # noqa: S606 - becomes Flower; the runner signals and waits for it


if __name__ == "__main__":
    sys.exit(main())
