"""`make run` on a machine state the test makes: one line per missing part, or the service with a private
Redis that `make run` starts and stops."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from project.launcher.profiles import STATE_DIR
from tests.helpers import ROOT, free_port, wait_for
from tests.project.launcher.helpers import Started, child_line, pid_in, processes_mentioning, running

MAKE = shutil.which("make") or "/usr/bin/make"
# What the test's own environment must not pass on: pytest-django's settings module, an outer make's flags.
SCRUBBED = ("DJANGO_SETTINGS_MODULE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "REDIS_URL", "DATABASE_URL", "PYTHON",
            "FLOWER_BASIC_AUTH", "FLOWER_ADDRESS", "FLOWER_PORT", "PORT", "HOST", "SECRET_KEY", "ENV_FILE",
            "DEMO_DATABASE_URL", "DEMO_REDIS_URL")



def machine(tmp_path: Path, **values: str) -> dict[str, str]:
    """The environment of a machine state: this test's values on a clean copy of the current one."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    return {**env, "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3", **values}


def make(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAKE, "-C", str(ROOT), "--no-print-directory", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)


def our_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """What the checks said, without make's own `make: *** [...] Error 1`."""
    return [line for line in (done.stdout + done.stderr).splitlines() if line and not line.startswith("make: ***")]


@pytest.fixture
def no_redis_server(tmp_path: Path) -> str:
    """A PATH with no redis-server on it (nor anything else: the Makefile names its Python by full path)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return str(empty)


def test_a_closed_redis_port_without_redis_installed_is_one_line(tmp_path: Path, no_redis_server: str) -> None:
    port = free_port()
    done = make("run", env=machine(tmp_path, REDIS_URL=f"redis://127.0.0.1:{port}/0", PATH=no_redis_server))
    assert done.returncode == 2  # make's, for a failed recipe
    assert our_lines(done) == [f"Redis: nothing answers at redis://127.0.0.1:{port}/0 and redis-server is not "
                               "installed: sudo apt-get install redis-server"]
    assert not (tmp_path / "db.sqlite3").exists(), "nothing was set up or started"


def test_every_missing_part_is_one_line_in_one_go(tmp_path: Path, no_redis_server: str) -> None:
    redis_port, postgres_port = free_port(), free_port()
    env = machine(tmp_path, DEMO_REDIS_URL=f"redis://127.0.0.1:{redis_port}/1", PATH=no_redis_server,
                  DEMO_DATABASE_URL=f"postgres://postgres@127.0.0.1:{postgres_port}/trades",
                  FLOWER_BASIC_AUTH="admin:change-me")
    done = make("demo", env=env)
    assert done.returncode == 2
    assert our_lines(done) == [
        f"Redis: nothing answers at redis://127.0.0.1:{redis_port}/1 and redis-server is not installed: "
        "sudo apt-get install redis-server",
        f"PostgreSQL: nothing answers at 127.0.0.1:{postgres_port} (connection refused): "
        "sudo apt-get install postgresql, or unset DEMO_DATABASE_URL to use SQLite",
        "Flower: FLOWER_BASIC_AUTH is the known default admin:change-me: set a real user:password, or unset it "
        "(make run generates one into .env)",
    ]


def test_without_python_311_make_run_says_so(tmp_path: Path) -> None:
    done = make("run", "PYTHON=/nonexistent/python3.11", env=machine(tmp_path))
    assert done.returncode == 2
    assert our_lines(done) == ["Python: Python 3.11 is needed (found none at /nonexistent/python3.11): "
                               "sudo apt-get install python3.11 python3.11-venv"]


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_make_test_checks_but_never_starts_a_redis(tmp_path: Path) -> None:
    port = free_port()
    done = make("check", "PROFILE=--tests", env=machine(tmp_path, REDIS_URL=f"redis://127.0.0.1:{port}/15"))
    assert done.returncode == 2
    assert our_lines(done) == [f"Redis: nothing answers at redis://127.0.0.1:{port}/15 (connection refused): "
                               "start it: sudo systemctl start redis-server (.ci/run starts it without systemd)"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.fixture
def redis_port() -> Iterator[int]:
    """A free port for a private Redis; its folder under .run/ is removed afterwards."""
    port = free_port()
    yield port
    shutil.rmtree(STATE_DIR / f"redis-{port}", ignore_errors=True)
    if STATE_DIR.is_dir() and not any(STATE_DIR.iterdir()):
        STATE_DIR.rmdir()


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_make_run_starts_a_private_redis_and_stops_everything_on_sigterm(tmp_path: Path, redis_port: int) -> None:
    procfile, env_file = tmp_path / "Procfile", tmp_path / ".env"
    procfile.write_text(child_line("sleeper", tmp_path) + "\n")
    run_args = f"RUN_ARGS=--procfile {procfile} --env-file {env_file} --secrets {env_file}"
    env = machine(tmp_path, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
    # -o: the virtualenv counts as installed (CI's `make test` has just made it).
    started = Started([MAKE, "-C", str(ROOT), "--no-print-directory", "-o", ".venv/.installed", "run", run_args], env)
    try:
        wait_for(lambda: started.said("| ready:"), timeout=120)
        client = redis.Redis(port=redis_port)
        assert client.ping() and client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
        sleeper = wait_for(lambda: pid_in(tmp_path / "sleeper.pid"), timeout=30)
        assert started.said(f"Redis was not running at redis://127.0.0.1:{redis_port}/0: started a private one")
        assert started.said(f"generated FLOWER_BASIC_AUTH into {env_file}")
        os.killpg(started.process.pid, signal.SIGTERM)  # what a terminal's Ctrl-C or a supervisor's stop does
        started.wait(60)
    finally:
        started.kill()
    assert not running(sleeper)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", redis_port), timeout=2).close()
    assert processes_mentioning(str(tmp_path)) == [] and processes_mentioning(f"redis-{redis_port}") == []
    assert sum(line.endswith("| ready:") for line in started.lines) == 1, "the banner comes once"
    assert started.said("every process has stopped") and started.said("stopped the private Redis")
    assert not started.said("again: killing"), "make's forwarded SIGTERM is the same stop, not a second one"
    generated = env_file.read_text()
    assert "FLOWER_BASIC_AUTH=admin:" in generated and "change-me" not in generated
    assert env_file.stat().st_mode & 0o777 == 0o600


def test_make_manage_runs_manage_py_with_make_runs_environment(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"DATABASE_URL=sqlite:///{tmp_path}/other.sqlite3\nFLOWER_BASIC_AUTH=a:7f3kq9-xw2p1\n")
    env = machine(tmp_path)
    del env["DATABASE_URL"]  # from the env file
    args = [sys.executable, "-m", "project.launcher.run", "--env-file", str(env_file), "--", "shell", "-c",
            "from django.conf import settings; print(settings.DEBUG, settings.DATABASES['default']['NAME'])",
            "--no-imports"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"True {tmp_path}/other.sqlite3"  # DEBUG=1 is make run's default
