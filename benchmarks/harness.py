"""What the whole-stack benchmarks share (the soak, the scale run): a scratch database, a private Redis, the
project's processes' environment, and readings of a process (CPU, memory, Redis connections)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dj_database_url
import psycopg
import redis

from benchmarks.storage import postgres_url
from streams.fake.exchange import FakeExchange

ROOT = Path(__file__).resolve().parent.parent


_SECRET_KEY = secrets.token_urlsafe(50)


def environment(database: str, redis_url: str, ex: FakeExchange, tuning: dict[str, str],
                proxy_port: int | None = None) -> dict[str, str]:
    """The environment of the project's processes for a run (the database through a proxy, if given)."""
    if proxy_port is not None:
        database = database.replace(f":{dj_database_url.parse(database)['PORT']}/", f":{proxy_port}/")
    # DEBUG off, as in production (a strong key is then required; the processes serve no page).
    return {**os.environ, **tuning, "DEBUG": "0", "SECRET_KEY": _SECRET_KEY,
            "DJANGO_SETTINGS_MODULE": "project.settings", "DATABASE_URL": database, "REDIS_URL": redis_url,
            "BINANCE_WS_URL": ex.ws_url, "BINANCE_REST_URL": ex.rest_url, "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1"}


def manage(env: dict[str, str], *args: str, direct: str | None = None) -> None:
    run_env = {**env, "DATABASE_URL": direct} if direct else env
    for _ in range(5):  # the exchange answers a REST page that is not JSON now and then: try again
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=run_env, capture_output=True,
                              text=True, timeout=120, check=False)
        if done.returncode == 0:
            return
    raise RuntimeError(f"manage.py {' '.join(args)} failed: {done.stderr[-2000:]}")


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        with contextlib.closing(socket.socket()) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrivateRedis:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)

    def _start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: pings(self.url), 10, "the private redis-server answers")

    def restart_empty(self) -> None:
        assert self.process is not None
        self.process.kill()  # no persistence: everything it held is gone
        self.process.wait(timeout=10)
        self._start()


def pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    base = dj_database_url.parse(postgres_url())
    name = f"soak_{os.getpid()}"
    admin = psycopg.connect(host=base["HOST"], port=base["PORT"], user=base["USER"], password=base["PASSWORD"] or None,
                            dbname=base["NAME"], autocommit=True)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    password = f":{base['PASSWORD']}" if base["PASSWORD"] else ""
    try:
        yield f"postgres://{base['USER']}{password}@{base['HOST']}:{base['PORT']}/{name}"
    finally:
        admin = psycopg.connect(host=base["HOST"], port=base["PORT"], user=base["USER"],
                                password=base["PASSWORD"] or None, dbname=base["NAME"], autocommit=True)
        with admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _query(database: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database) as connection:
        return connection.execute(sql, params).fetchall()


def query(database: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database) as connection:
        return connection.execute(sql, params).fetchall()


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_connections(pid: int, port: int) -> int:
    """TCP connections of a process to a Redis port (its sockets matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if int(parts[2].rsplit(":", 1)[1], 16) == port and parts[9] in inodes and parts[3] == "01":
                    count += 1
    return count


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"soak: not within {timeout:.0f} s: {what}")
        time.sleep(1.0)
