"""A private Redis for `make run` when REDIS_URL points at this machine and nothing answers there.

Its configuration, data and log live in .run/redis-<port>/ (ignored by git), append-only file on, so the
hand-off buffer survives a restart of `make run`. It runs in a session of its own: Ctrl-C in the terminal
reaches only the runner, which stops the workers first (they hand what they hold to Redis as they stop);
Redis is stopped last. On Linux it also gets SIGTERM if `make run` itself is killed. One that dies while
`make run` runs is started again at once (and said), so the processes find their Redis again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from project.launcher.preflight import RedisTarget, redis_reply
from project.launcher.procs import exit_description
from project.launcher.profiles import STATE_DIR

START_TIMEOUT = 10.0  # s for redis-server to answer PING
RESTART_DELAY, RESTART_DELAY_CAP = 1.0, 30.0  # s before starting again one that exits at once, doubling
STOP_TIMEOUT = 10.0  # s for it to write its append-only file and exit before SIGKILL


class PrivateRedisError(RuntimeError):
    """The private Redis did not come up; the message is one line that says where its log is."""


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr)


def redis_config(target: RedisTarget, folder: Path) -> str:
    """redis.conf: the URL's address and port only, append-only, no RDB snapshots, a log file."""
    bind = "127.0.0.1 -::1" if target.host == "localhost" else target.host
    lines = [f"bind {bind}", "protected-mode yes", f"port {target.port}", "daemonize no",
             f'dir "{folder}"', 'logfile "redis.log"', 'save ""', "appendonly yes", "appendfsync everysec"]
    if target.password:  # in the file (mode 600), not on the command line where `ps` shows it
        lines.append(f'requirepass "{_quoted(target.password)}"')
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def private_redis(target: RedisTarget, state_dir: Path = STATE_DIR,
                  say: Callable[[str], None] = _to_stderr) -> Iterator[Path]:
    """Run a redis-server for `target` while the block runs, started again whenever it dies (its
    append-only file brings the buffer back); yields its folder. Raises PrivateRedisError."""
    folder = state_dir / f"redis-{target.port}"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "redis.conf"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(redis_config(target, folder))
    watched = _Watched(target, folder, config, say)
    watched.start()
    try:
        yield folder
    finally:
        watched.stop()


class _Watched:
    """The redis-server process, and a thread that starts it again when it exits while not stopping."""

    def __init__(self, target: RedisTarget, folder: Path, config: Path, say: Callable[[str], None]) -> None:
        self.target, self.folder, self.config, self.say = target, folder, config, say
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # held while a process is started or stopped
        self._thread = threading.Thread(target=self._watch, name="private redis", daemon=True)

    def start(self) -> None:
        self.process = self._spawn()
        try:
            _wait_until_up(self.process, self.target, self.folder)
        except PrivateRedisError:
            _stop(self.process)
            raise
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            if self.process is not None:
                _stop(self.process)
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_TIMEOUT)

    def _spawn(self) -> subprocess.Popen[bytes]:
        server = shutil.which("redis-server") or "redis-server"
        with open(self.folder / "redis.log", "ab") as log:
            return subprocess.Popen([server, str(self.config)], stdin=subprocess.DEVNULL,  # noqa: S603
                                    stdout=log, stderr=log, start_new_session=True,
                                    preexec_fn=_die_with_parent)  # noqa: PLW1509

    def _watch(self) -> None:
        delay = RESTART_DELAY
        while True:
            assert self.process is not None
            code = self.process.wait()
            with self._lock:
                if self._stopping.is_set():
                    return
                self.say(f"Redis: the private Redis exited ({exit_description(code)}); started it again "
                         f"(its log: {self.folder / 'redis.log'})")
                self.process = self._spawn()
            try:
                _wait_until_up(self.process, self.target, self.folder)
                delay = RESTART_DELAY
            except PrivateRedisError as exc:  # it exits at once again: say so, wait longer each time
                if self._stopping.is_set():
                    return
                self.say(f"{exc}; trying again in {delay:g} s")
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, RESTART_DELAY_CAP)


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
