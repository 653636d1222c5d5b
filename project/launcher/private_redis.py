"""A private Redis for `make run` when REDIS_URL points at this machine and nothing answers there.

Its configuration, data and log live in .run/redis-<port>/ (ignored by git), append-only file on, so the
hand-off buffer survives a restart of `make run`. It runs in a session of its own: Ctrl-C in the terminal
reaches only the runner, which stops the workers first (they hand what they hold to Redis as they stop);
Redis is stopped last. On Linux it also gets SIGTERM if `make run` itself is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from project.launcher.preflight import RedisTarget, redis_reply
from project.launcher.profiles import STATE_DIR

START_TIMEOUT = 10.0  # s for redis-server to answer PING
STOP_TIMEOUT = 10.0  # s for it to write its append-only file and exit before SIGKILL


class PrivateRedisError(RuntimeError):
    """The private Redis did not come up; the message is one line that says where its log is."""


def redis_config(target: RedisTarget, folder: Path) -> str:
    """redis.conf: the URL's address and port only, append-only, no RDB snapshots, a log file."""
    bind = "127.0.0.1 -::1" if target.host == "localhost" else target.host
    lines = [f"bind {bind}", "protected-mode yes", f"port {target.port}", "daemonize no",
             f'dir "{folder}"', 'logfile "redis.log"', 'save ""', "appendonly yes", "appendfsync everysec"]
    if target.password:  # in the file (mode 600), not on the command line where `ps` shows it
        lines.append(f'requirepass "{_quoted(target.password)}"')
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def private_redis(target: RedisTarget, state_dir: Path = STATE_DIR) -> Iterator[Path]:
    """Run a redis-server for `target` while the block runs; yields its folder. Raises PrivateRedisError."""
    folder = state_dir / f"redis-{target.port}"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "redis.conf"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(redis_config(target, folder))
    server = shutil.which("redis-server") or "redis-server"
    with open(folder / "redis.log", "ab") as log:
        process = subprocess.Popen([server, str(config)], stdin=subprocess.DEVNULL, stdout=log,  # noqa: S603
                                   stderr=log, start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509
    try:
        _wait_until_up(process, target, folder)
        yield folder
    finally:
        _stop(process)


def _wait_until_up(process: subprocess.Popen[bytes], target: RedisTarget, folder: Path) -> None:
    """Polls: redis-server says nothing else when it is ready."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrivateRedisError(f"Redis: the private redis-server exited at once ({_last_line(folder)}): "
                                    f"see {folder / 'redis.log'}")
        with contextlib.suppress(OSError):
            if redis_reply(target, timeout=0.5).startswith("+"):
                return
        time.sleep(0.05)
    raise PrivateRedisError(f"Redis: the private redis-server did not answer within {START_TIMEOUT:g} s: "
                            f"see {folder / 'redis.log'}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()  # Redis writes its append-only file and exits
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux's PR_SET_PDEATHSIG)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def _last_line(folder: Path) -> str:
    try:
        lines = (folder / "redis.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][-160:] if lines else "empty log"


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
