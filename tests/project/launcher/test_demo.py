"""`make demo` keeps to its own database and Redis database: its fake trades and streams never reach the real
service's, whatever the environment or .env say; `make manage DEMO=1` aims a command at the demo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings

from project.launcher.preflight import shared_with_run
from project.launcher.profiles import DEMO, STATE_DIR, profile_env
from tests.helpers import ROOT, free_port
from tests.project.launcher.helpers import Started
from tests.project.launcher.test_run_checks import machine

# A probe run by the demo's runner as one of its processes: what a demo process writes, and where.
PROBE = """
import os, sys
sys.path.insert(0, {root!r})
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django
django.setup()
from django.conf import settings
from workers.redis import sync_redis
from workers.registry import enable_stream
enable_stream("btcusdt", "trade")
sync_redis().set("collector:probe", "demo")
with open({out!r}, "w") as out:
    out.write(settings.DATABASES["default"]["NAME"] + "\\n" + settings.REDIS_URL + "\\n")
"""


@pytest.fixture
def real_redis() -> Iterator[redis.Redis]:
    """The test's Redis database, as the real service's: empty before, and checked empty after."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def demo_args(tmp_path: Path) -> list[str]:
    """The demo's env files, with its generated secrets in the test's folder rather than .run/."""
    secrets = tmp_path / "demo.env"
    return ["--demo", "--env-file", str(ROOT / ".env.demo"), "--env-file", str(secrets), "--secrets", str(secrets)]


def test_make_manage_demo_aims_a_command_at_the_demo_whatever_the_environment_says(tmp_path: Path) -> None:
    env = machine(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/real.sqlite3", REDIS_URL="redis://127.0.0.1:6379/0")
    code = ("from django.conf import settings; print(settings.DATABASES['default']['NAME'], settings.REDIS_URL, "
            "settings.BINANCE_WS_URL)")
    done = subprocess.run([sys.executable, "-m", "project.launcher.run", *demo_args(tmp_path), "--", "shell",
                           "--no-imports", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(ROOT / "demo.sqlite3"), "redis://127.0.0.1:6379/1", "ws://127.0.0.1:9443"]


def test_the_demo_refuses_a_database_or_redis_database_that_make_run_uses() -> None:
    environ = {"DEMO_DATABASE_URL": "sqlite:///db.sqlite3", "DEMO_REDIS_URL": "redis://localhost:6379/?db=4",
               "REDIS_URL": "redis://127.0.0.1:6379/4", "ENV_FILE": ""}
    assert shared_with_run(DEMO, profile_env(DEMO, environ), environ) == [
        "make demo: its database sqlite:///db.sqlite3 is make run's: set DEMO_DATABASE_URL to another one",
        "make demo: its Redis database redis://localhost:6379/?db=4 is make run's: set DEMO_REDIS_URL to another "
        "database (redis://host:port/N)",
    ]
    assert shared_with_run(DEMO, profile_env(DEMO, {"ENV_FILE": ""}), {"ENV_FILE": ""}) == []


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_a_demo_run_never_touches_the_real_database_or_redis_database(tmp_path: Path,
                                                                       real_redis: redis.Redis) -> None:
    port = free_port()
    out, probe, procfile = tmp_path / "seen.txt", tmp_path / "probe.py", tmp_path / "Procfile"
    probe.write_text(PROBE.format(root=str(ROOT), out=str(out)))
    procfile.write_text(f"probe: {sys.executable} {probe}\n")
    real_database = tmp_path / "real.sqlite3"
    env = machine(tmp_path, DATABASE_URL=f"sqlite:///{real_database}", REDIS_URL=settings.REDIS_URL,
                  DEMO_DATABASE_URL=f"sqlite:///{tmp_path}/demo.sqlite3",
                  DEMO_REDIS_URL=f"redis://127.0.0.1:{port}/1", FLOWER_BASIC_AUTH="demo:7f3kq9-xw2p1-q8")
    started = Started([sys.executable, "-m", "project.launcher.run", *demo_args(tmp_path), "--procfile",
                       str(procfile)], env)
    try:
        assert started.wait(120) == 0, started.output()
    finally:
        started.kill()
        shutil.rmtree(STATE_DIR / f"redis-{port}", ignore_errors=True)
    assert out.read_text().split() == [f"{tmp_path}/demo.sqlite3", f"redis://127.0.0.1:{port}/1"]
    assert started.said(f"Redis was not running at redis://127.0.0.1:{port}/1: started a private one")
    assert not real_database.exists(), "make run's database was never opened"
    assert real_redis.dbsize() == 0, "nothing was written into make run's Redis database"
