"""make run's checks, one function at a time, against real sockets and servers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

import pytest
import redis
from django.conf import settings

from project.launcher.preflight import database_problem, machine_problems, redis_state, redis_target, venv_problem
from project.launcher.private_redis import private_redis
from project.launcher.profiles import RUN, TESTS
from tests.helpers import free_port, wait_for

INSTALLED = lambda name: f"/usr/bin/{name}"  # noqa: E731 - a `which` that finds everything
MISSING = lambda name: None  # noqa: E731 - a `which` that finds nothing



def test_a_running_redis_needs_nothing() -> None:
    state = redis_state(settings.REDIS_URL, may_start=True)
    assert state.problem is None and not state.start_private


def test_a_stopped_local_redis_that_is_installed_is_started_privately() -> None:
    state = redis_state(f"redis://127.0.0.1:{free_port()}/0", may_start=True, which=INSTALLED)
    assert state.start_private and state.problem is None


def test_a_stopped_local_redis_that_is_not_installed_says_how_to_install_it() -> None:
    port = free_port()
    state = redis_state(f"redis://127.0.0.1:{port}/0", may_start=True, which=MISSING)
    assert state.problem == (f"Redis: nothing answers at redis://127.0.0.1:{port}/0 and redis-server is not "
                             "installed: sudo apt-get install redis-server")


def test_the_tests_never_start_a_redis_they_say_how_to_start_one() -> None:
    state = redis_state(f"redis://localhost:{free_port()}/15", may_start=False, which=INSTALLED)
    assert not state.start_private
    assert state.problem is not None
    assert "(connection refused): start it: sudo systemctl start redis-server" in state.problem


def test_something_else_on_the_port_is_not_taken_for_redis() -> None:
    postgres = settings.DATABASES["default"]
    state = redis_state(f"redis://{postgres['HOST']}:{postgres['PORT']}/0", may_start=True, which=INSTALLED)
    assert not state.start_private
    assert state.problem is not None and "point REDIS_URL at a Redis server" in state.problem


def test_a_local_port_that_listens_but_never_answers_is_not_taken_for_a_stopped_redis() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        state = redis_state(url, may_start=True, which=INSTALLED, timeout=0.3)
    assert not state.start_private
    assert state.problem == (f"Redis at {url}: something listens there but does not answer (no answer within 0.3 s): "
                             "point REDIS_URL at a Redis server")


def test_a_redis_elsewhere_is_never_started_here() -> None:
    assert not redis_target("redis://10.1.2.3:6379/0").local
    assert redis_target("redis://localhost:6379/0").local and redis_target("redis://[::1]:6379/0").local
    assert redis_target("redis://:s3cret@127.0.0.1:6379/0").url == "redis://:***@127.0.0.1:6379/0"


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_the_private_redis_keeps_an_append_only_file_checks_passwords_and_stops(tmp_path: Path) -> None:
    port = free_port()
    target = redis_target(f"redis://:s3cret@127.0.0.1:{port}/0")
    with private_redis(target, state_dir=tmp_path) as folder:
        client = redis.Redis(port=port, password="s3cret")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("dir") == {"dir": str(folder)}
        assert redis_state(f"redis://:s3cret@127.0.0.1:{port}/0", may_start=True).problem is None
        wrong = redis_state(f"redis://:nope@127.0.0.1:{port}/0", may_start=True).problem
        assert wrong is not None and "refuses the login" in wrong and "nope" not in wrong
        client.xadd("buffer", {"trade": "1"})
        client.close()
    assert redis_state(f"redis://127.0.0.1:{port}/0", may_start=False, which=INSTALLED).problem is not None
    assert (folder / "appendonlydir").is_dir() and (folder / "redis.log").exists()
    assert (folder / "redis.conf").stat().st_mode & 0o777 == 0o600  # it holds the password
    with private_redis(target, state_dir=tmp_path):  # the buffer survives a restart
        assert redis.Redis(port=port, password="s3cret").xlen("buffer") == 1


def test_sqlite_needs_a_writable_folder(tmp_path: Path) -> None:
    assert database_problem(f"sqlite:///{tmp_path}/db.sqlite3") is None
    problem = database_problem(f"sqlite:///{tmp_path}/missing/db.sqlite3")
    assert problem == (f"SQLite: cannot write to the folder {tmp_path}/missing of DATABASE_URL: create it, "
                       "or fix DATABASE_URL")


def test_postgresql_problems_name_the_fix() -> None:
    db = settings.DATABASES["default"]
    server = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}"
    assert database_problem(f"{server}/postgres") is None
    assert database_problem(f"{server}/no_such_db") == (
        f'PostgreSQL: database "no_such_db" does not exist at {db["HOST"]}:{db["PORT"]}: '
        f"createdb -h {db['HOST']} -p {db['PORT']} -U {db['USER']} no_such_db")
    assert database_problem(f"{server}/no_such_db", must_exist=False) is None  # the tests create theirs
    port = free_port()
    down = database_problem(f"postgres://postgres@127.0.0.1:{port}/x", which=MISSING)
    assert down == (f"PostgreSQL: nothing answers at 127.0.0.1:{port} (connection refused): "
                    "sudo apt-get install postgresql, or unset DATABASE_URL to use SQLite")


def test_a_python_without_ensurepip_cannot_make_the_virtualenv(tmp_path: Path) -> None:
    stdlib = tmp_path / "stdlib"
    (stdlib / "ensurepip").mkdir(parents=True)
    assert venv_problem(tmp_path / "venv", str(stdlib)) == (
        "Python: python3.11-venv is missing (Python cannot create .venv): sudo apt-get install python3.11-venv")
    (stdlib / "ensurepip" / "__main__.py").write_text("")
    assert venv_problem(tmp_path / "venv", str(stdlib)) is None


def test_every_missing_part_gets_its_own_line(tmp_path: Path) -> None:
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/x", "FLOWER_BASIC_AUTH": "admin"}
    problems = machine_problems(RUN, env, env, which=MISSING)
    assert [line.split(":")[0] for line in problems] == ["Redis", "PostgreSQL", "Flower"]
    assert machine_problems(TESTS, {"REDIS_URL": settings.REDIS_URL, "DATABASE_URL": f"sqlite:///{tmp_path}/x"},
                            {}) == []


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_the_private_redis_comes_back_when_it_dies_while_make_run_runs(tmp_path: Path) -> None:
    # make run started it and watched only the Procfile's processes: a redis-server killed (the OOM killer,
    # a stray kill) left every process retrying its connection for as long as make run ran.
    port = free_port()
    said: list[str] = []
    with private_redis(redis_target(f"redis://127.0.0.1:{port}/0"), state_dir=tmp_path, say=said.append):
        client = redis.Redis(port=port)
        first = client.info("server")["process_id"]
        client.xadd("buffer", {"trade": "1"})
        client.bgrewriteaof()  # on disk now, not within the next second
        wait_for(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0, timeout=10)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: _answers(client) and client.info("server")["process_id"] != first, timeout=20)
        assert client.xlen("buffer") == 1  # the append-only file brought the buffer back
        client.close()
    assert any("the private Redis exited (exit code -9, SIGKILL); started it again" in line for line in said), said


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
