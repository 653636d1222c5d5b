"""`make run`'s checks before anything starts: one line per missing part, naming it and its fix.

Run first by the system Python (`python3.11 -m project.launcher.preflight`), before the virtualenv exists, so
a new user learns everything that is missing at once; then again by `project.launcher.run` with psycopg at hand,
which also logs in to PostgreSQL.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import socket
import sys
import sysconfig
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from project.envfiles import EnvFileError
from project.launcher import ROOT
from project.launcher.flower import basic_auth_problem
from project.launcher.profiles import RUN, Profile, profile_arguments, profile_env, profile_from_args

Which = Callable[[str], "str | None"]
TIMEOUT = 2.0  # s, for each service to answer
DEFAULT_DATABASE_URL = f"sqlite:///{ROOT / 'db.sqlite3'}"  # project/settings.py's
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_INSTALL = "sudo apt-get install redis-server"


@dataclass(frozen=True)
class RedisTarget:
    """Where REDIS_URL points."""

    url: str  # with the password masked, for messages
    host: str
    port: int
    username: str | None
    password: str | None
    unix_path: str | None = None

    @property
    def local(self) -> bool:
        """On this machine over TCP: a private Redis can be started for it."""
        return self.unix_path is None and _is_local(self.host)


@dataclass(frozen=True)
class RedisState:
    """What to do about Redis: nothing, start a private one, or stop with `problem`."""

    start_private: bool = False
    problem: str | None = None


def redis_target(url: str) -> RedisTarget:
    parts = urlsplit(url)
    masked = url.replace(f":{parts.password}@", ":***@") if parts.password else url
    username, password = unquote(parts.username or "") or None, unquote(parts.password or "") or None
    if parts.scheme == "unix":
        return RedisTarget(masked, "", 0, username, password, unix_path=parts.path)
    return RedisTarget(masked, parts.hostname or "localhost", parts.port or 6379, username, password)


def redis_reply(target: RedisTarget, timeout: float = TIMEOUT) -> str:
    """Redis's first reply line to AUTH (when a password is set) and PING. Raises OSError."""
    with _redis_socket(target, timeout) as sock:
        if target.password:
            sock.sendall(_resp("AUTH", *([target.username] if target.username else []), target.password))
            reply = _line(sock)
            if not reply.startswith("+"):
                return reply
        sock.sendall(_resp("PING"))
        return _line(sock)


def _redis_socket(target: RedisTarget, timeout: float) -> socket.socket:
    if target.unix_path is None:
        return socket.create_connection((target.host, target.port), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(target.unix_path)
    except OSError:
        sock.close()
        raise
    return sock


def redis_state(url: str, may_start: bool, which: Which = shutil.which, timeout: float = TIMEOUT) -> RedisState:
    """Redis answers; or it is local, installed, and may be started privately; or the problem line."""
    target = redis_target(url)
    try:
        reply = redis_reply(target, timeout)
    except OSError as exc:
        if target.local and not isinstance(exc, ConnectionRefusedError):  # loopback refuses at once, or listens
            return RedisState(problem=f"Redis at {target.url}: something listens there but does not answer "
                                      f"({_reason(exc, timeout)}): point REDIS_URL at a Redis server")
        return _redis_down(target, _reason(exc, timeout), may_start, which)
    if reply.startswith("+"):
        return RedisState()
    if not reply:  # something listens there, and it is not Redis
        return RedisState(problem=f"Redis at {target.url}: the connection was closed without an answer: "
                                  "point REDIS_URL at a Redis server")
    if reply.startswith(("-NOAUTH", "-WRONGPASS", "-ERR invalid password", "-ERR AUTH")):
        return RedisState(problem=f"Redis at {target.url} refuses the login ({reply[1:60]}): "
                                  "put the right password in REDIS_URL (redis://:PASSWORD@host:port/0)")
    what = reply[1:80] if reply.startswith("-") else "something that does not speak Redis answers"
    return RedisState(problem=f"Redis at {target.url}: {what}: point REDIS_URL at a Redis server")


def _redis_down(target: RedisTarget, reason: str, may_start: bool, which: Which) -> RedisState:
    if not target.local:
        return RedisState(problem=f"Redis: nothing answers at {target.url} ({reason}): start it there, "
                                  "or point REDIS_URL at one that runs")
    if not which("redis-server"):
        return RedisState(problem=f"Redis: nothing answers at {target.url} and redis-server is not installed: "
                                  f"{REDIS_INSTALL}")
    if may_start:
        return RedisState(start_private=True)
    return RedisState(problem=f"Redis: nothing answers at {target.url} ({reason}): start it: "
                              "sudo systemctl start redis-server (.ci/run starts it without systemd)")


def database_problem(url: str, must_exist: bool = True, which: Which = shutil.which,
                     timeout: float = TIMEOUT) -> str | None:
    """Why the database in DATABASE_URL cannot be used, or None. SQLite needs only a writable folder."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return _sqlite_problem(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if parts.scheme in ("postgres", "postgresql", "pgsql", "postgis"):
        return _postgres_problem(url, must_exist, which, timeout)
    return None  # other engines: Django's own error will have to do


def _sqlite_problem(path: str) -> str | None:
    if not path or path == ":memory:":
        return None
    folder = (ROOT / path).parent
    if folder.is_dir() and os.access(folder, os.W_OK):
        return None
    return f"SQLite: cannot write to the folder {folder} of DATABASE_URL: create it, or fix DATABASE_URL"


def _postgres_problem(url: str, must_exist: bool, which: Which, timeout: float) -> str | None:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 5432
    where = f"{host or 'the local socket'}:{port}"
    try:
        import psycopg
    except ImportError:  # the system Python, before the virtualenv: only whether the port answers
        return _postgres_port_problem(host, port, where, which, timeout)
    libpq_url = "postgresql" + url[len(parts.scheme):]  # libpq knows neither pgsql:// nor postgis://
    try:
        # The tests create their own database: the server's own `postgres` database is enough for them.
        conninfo = libpq_url if must_exist else psycopg.conninfo.make_conninfo(libpq_url, dbname="postgres")
        psycopg.connect(conninfo, connect_timeout=max(1, round(timeout))).close()
    except psycopg.Error as exc:
        return _postgres_refusal(parts, where, str(exc), which)
    return None


def _postgres_port_problem(host: str, port: int, where: str, which: Which, timeout: float) -> str | None:
    if not host:
        return None
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return _postgres_down(host, where, _reason(exc, timeout), which)
    return None


def _postgres_refusal(parts: SplitResult, where: str, error: str, which: Which) -> str:
    name, user, host = parts.path.lstrip("/"), parts.username or "postgres", parts.hostname or ""
    first = (error.strip().splitlines() or ["no message"])[0]
    message = " ".join(first.rpartition("failed: ")[2].removeprefix("FATAL:").split())  # libpq's own words
    if "does not exist" in message and "database" in message:
        return (f'PostgreSQL: database "{name}" does not exist at {where}: '
                f"createdb -h {host or 'localhost'} -p {parts.port or 5432} -U {user} {name}")
    if "Connection refused" in error or "No such file or directory" in error:
        return _postgres_down(host, where, "connection refused", which)
    if "authentication failed" in message or "no password supplied" in message or "no pg_hba.conf" in message:
        return f"PostgreSQL at {where} refuses user {user!r} ({message}): fix the user and password in DATABASE_URL"
    return f"PostgreSQL at {where}: {message}: check DATABASE_URL"


def _postgres_down(host: str, where: str, reason: str, which: Which) -> str:
    local = not host or _is_local(host)
    if local and not which("pg_ctlcluster") and not which("postgres"):
        fix = "sudo apt-get install postgresql, or unset DATABASE_URL to use SQLite"
    elif local:
        versions = sorted(p.name for p in Path("/etc/postgresql").glob("*")) or ["15"]
        fix = f"sudo pg_ctlcluster {versions[-1]} main start, or unset DATABASE_URL to use SQLite"
    else:
        fix = "start it there, or fix DATABASE_URL"
    return f"PostgreSQL: nothing answers at {where} ({reason}): {fix}"


def venv_problem(venv: Path = ROOT / ".venv", stdlib: str | None = None) -> str | None:
    """Python cannot create the virtualenv: Debian keeps ensurepip in python3.11-venv (venv's own test)."""
    if (venv / "bin" / "python").exists():
        return None
    stdlib = stdlib or sysconfig.get_path("stdlib")
    if Path(stdlib, "ensurepip", "__main__.py").exists():
        return None
    return "Python: python3.11-venv is missing (Python cannot create .venv): sudo apt-get install python3.11-venv"


def flower_login_problem(profile: Profile, env: Mapping[str, str], environ: Mapping[str, str]) -> str | None:
    """A FLOWER_BASIC_AUTH that Flower would refuse; none (or an empty `NAME=` line) is fine when one will be
    generated, but not an empty value in the environment, which wins over the generated one."""
    if profile.procfile is None:
        return None
    if "FLOWER_BASIC_AUTH" in environ and not environ["FLOWER_BASIC_AUTH"].strip():
        return "Flower: FLOWER_BASIC_AUTH is empty in the environment: unset it (make run then generates one)"
    value = env.get("FLOWER_BASIC_AUTH", "")
    if not value.strip() and profile.secrets_file is not None:
        return None
    problem = basic_auth_problem(value)
    return f"Flower: {problem}" if problem else None


def shared_with_run(profile: Profile, env: Mapping[str, str], environ: Mapping[str, str]) -> list[str]:
    """The profile's own database or Redis database when it is make run's too (whose trades and streams
    are real): one line each, naming the variable that chooses another."""
    if not profile.own:
        return []
    real = profile_env(RUN, environ)
    found = []
    if _database_place(env.get("DATABASE_URL", DEFAULT_DATABASE_URL)) == _database_place(
            real.get("DATABASE_URL", DEFAULT_DATABASE_URL)):
        found.append(f"make {profile.name}: its database {env.get('DATABASE_URL')} is make run's: set "
                     f"{profile.prefix}DATABASE_URL to another one")
    if _redis_place(env.get("REDIS_URL", DEFAULT_REDIS_URL)) == _redis_place(real.get("REDIS_URL", DEFAULT_REDIS_URL)):
        found.append(f"make {profile.name}: its Redis database {redis_target(env.get('REDIS_URL', '')).url} is "
                     f"make run's: set {profile.prefix}REDIS_URL to another database (redis://host:port/N)")
    return found


def _database_place(url: str) -> tuple[str, ...]:
    """Where a DATABASE_URL's data lives: the SQLite file, or the PostgreSQL server and database."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return ("sqlite", str((ROOT / parts.path.removeprefix("/")).resolve()))
    host = "localhost" if not parts.hostname or _is_local(parts.hostname) else parts.hostname
    return ("server", host, str(parts.port or 5432), parts.path.lstrip("/"))


def _redis_place(url: str) -> tuple[str, ...]:
    """The Redis server and database number of a REDIS_URL."""
    target, parts = redis_target(url), urlsplit(url)
    database = parse_qs(parts.query).get("db", [parts.path.lstrip("/") if target.unix_path is None else ""])[0]
    host = "localhost" if target.local else target.host
    return (target.unix_path or host, str(target.port), database or "0")


def machine_problems(profile: Profile, env: Mapping[str, str], environ: Mapping[str, str],
                     which: Which = shutil.which) -> list[str]:
    """Every missing part, one line each, in the order a new user would install them."""
    redis = redis_state(env.get("REDIS_URL", DEFAULT_REDIS_URL), profile.private_redis, which)
    database = database_problem(env.get("DATABASE_URL", DEFAULT_DATABASE_URL),
                                must_exist=profile.procfile is not None, which=which)
    found = [venv_problem(), redis.problem, database, flower_login_problem(profile, env, environ)]
    return [_named_for(profile, line) for line in found if line] + shared_with_run(profile, env, environ)


def _named_for(profile: Profile, line: str) -> str:
    """The line with the variables the user sets for this profile: DEMO_REDIS_URL for the demo's REDIS_URL."""
    for name in profile.own:
        line = re.sub(rf"\b{name}\b", profile.prefix + name, line)
    return line


def _resp(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\r\n") and len(data) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode("utf-8", "replace")


def _reason(exc: OSError, timeout: float = TIMEOUT) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    return exc.strerror or exc.__class__.__name__


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m project.launcher.preflight", description=__doc__)
    profile_arguments(parser)
    profile = profile_from_args(parser.parse_args(argv))
    try:
        env = profile_env(profile)
    except EnvFileError as exc:
        print(f"make {profile.name}: {exc}", file=sys.stderr)
        return 1
    problems = machine_problems(profile, env, os.environ)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
