"""What `make run` and `make demo` give their processes: defaults, env files, the environment; the demo's own
database and Redis database whatever the environment says."""

from __future__ import annotations

from pathlib import Path

from project.launcher.profiles import DEMO, DEMO_DATABASE_URL, DEMO_REDIS_URL, Profile, profile_env
from tests.helpers import ROOT


def test_the_environment_wins_over_files_which_win_over_defaults(tmp_path: Path) -> None:
    first, second = tmp_path / "first.env", tmp_path / "second.env"
    first.write_text("A=file1\nB=file1\nC=file1\n")
    second.write_text("B=file2\n")
    profile = Profile("x", None, (first, second, tmp_path / "absent.env"), None, {"A": "d", "D": "d", "C": "d"})
    assert profile_env(profile, {"C": "env"}) == {"A": "file1", "B": "file2", "C": "env", "D": "d", "ENV_FILE": ""}


def test_the_demo_has_its_own_database_and_redis_database_whatever_the_environment_says() -> None:
    real = {"DATABASE_URL": "postgres://ops@db.example.com/trades", "REDIS_URL": "redis://127.0.0.1:6379/0"}
    env = profile_env(DEMO, real)
    assert env["DATABASE_URL"] == DEMO_DATABASE_URL == f"sqlite:///{ROOT / 'demo.sqlite3'}"
    assert env["REDIS_URL"] == DEMO_REDIS_URL == "redis://127.0.0.1:6379/1"
    assert env["BINANCE_WS_URL"] == "ws://127.0.0.1:9443", "the fake exchange (.env.demo)"
    assert env["ENV_FILE"] == "", "its processes never read the real service's .env"
    chosen = profile_env(DEMO, {**real, "DEMO_REDIS_URL": "redis://127.0.0.1:6379/7"})
    assert chosen["REDIS_URL"] == "redis://127.0.0.1:6379/7"
