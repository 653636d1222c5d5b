"""Env files read as honcho and docker compose read them, strictly; generated values written privately; and a
command typed in a shell reads the env file that make run wrote, under the environment."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from project.envfiles import (
    DEFAULT_ENV_FILE,
    EnvFileError,
    env_file_load,
    env_file_path,
    envfile_add,
    envfile_parse,
    envfile_read,
)
from project.launcher import ROOT
from project.launcher.credentials import secrets_ensure
from project.launcher.profiles import RUN


def test_it_reads_comments_exports_quotes_and_inline_comments() -> None:
    text = """
# a comment
export DEBUG=1
PORT = 8600
SECRET_KEY=                 # generated when empty
GREETING="hello # not a comment\\n"
RAW='a\\nb'
FRAGMENT=a#b
NOTE=value   # a comment
"""
    assert envfile_parse(text) == {"DEBUG": "1", "PORT": "8600", "SECRET_KEY": "",
                                   "GREETING": "hello # not a comment\n", "RAW": "a\\nb", "FRAGMENT": "a#b",
                                   "NOTE": "value"}


@pytest.mark.parametrize("line", ["JUST_A_NAME", "1BAD=x", 'OPEN="never closed'])
def test_a_bad_line_is_an_error_naming_the_file_and_line(line: str) -> None:
    with pytest.raises(EnvFileError, match=r"\.env:2: "):
        envfile_parse(f"OK=1\n{line}\n", ".env")


def test_env_example_is_a_valid_env_file() -> None:
    values = envfile_read(ROOT / ".env.example")
    assert values["FLOWER_ADDRESS"] == "127.0.0.1" and values["HOST"] == "127.0.0.1"
    assert values["FLOWER_BASIC_AUTH"] == "" and values["SECRET_KEY"] == ""  # no known default to copy


def test_added_values_go_into_a_private_file_filling_empty_lines_in_place(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    envfile_add(path, {"A": "1"}, "first", header="# header\n")
    assert path.read_text() == "# header\n# first\nA=1\n"
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("B=2\nSECRET_KEY=   # fill me\nC=3")
    envfile_add(path, {"SECRET_KEY": "s", "D": "4"}, "generated")
    assert path.read_text() == "B=2\nSECRET_KEY=s\nC=3\n# generated\nD=4\n"


def test_a_process_started_by_hand_reads_dotenv_under_the_environment_with_make_runs_defaults(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DATABASE_URL=sqlite:///from-file.sqlite3\nPORT=8600\n")
    environ = {"ENV_FILE": str(env_file), "PORT": "9000", "SECRET_KEY": ""}
    assert env_file_load(environ) == env_file
    assert environ == {"ENV_FILE": str(env_file), "DATABASE_URL": "sqlite:///from-file.sqlite3",
                       "PORT": "9000", "SECRET_KEY": "", "DEBUG": "1"}  # set, even empty, is the environment's
    env_file.write_text("DEBUG=0\n")
    environ = {"ENV_FILE": str(env_file)}
    env_file_load(environ)
    assert environ["DEBUG"] == "0", "the file wins over make run's default"


def test_without_env_file_or_with_other_settings_nothing_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=8600\n")
    for environ in ({"ENV_FILE": ""}, {"ENV_FILE": str(env_file), "DJANGO_SETTINGS_MODULE": "tests.settings"}):
        before = dict(environ)
        assert env_file_load(environ) is None
        assert environ == before
    assert env_file_path({}) == DEFAULT_ENV_FILE == ROOT / ".env"
    with pytest.raises(EnvFileError, match="is not a file"):
        env_file_load({"ENV_FILE": str(tmp_path / "absent.env")})


def by_hand(env_file: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """`command` typed in a shell after the Quickstart: nothing in the environment but what a shell has."""
    scrubbed = ("DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "LOG_LEVEL", "DJANGO_SETTINGS_MODULE")
    env = {name: value for name, value in os.environ.items() if name not in scrubbed}
    env["ENV_FILE"] = str(env_file)  # where `.env` of the checkout would be: the test must not write that one
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def first_run_env_file(tmp_path: Path) -> Path:
    """The .env that the first `make run` leaves (its generated Flower login), with a database of the test's."""
    env_file = tmp_path / ".env"
    env_file.write_text(f"DATABASE_URL=sqlite:///{tmp_path}/db.sqlite3\nLOG_LEVEL=WARNING\n")
    assert secrets_ensure(dataclasses.replace(RUN, env_files=(env_file,), secrets_file=env_file), {})
    return env_file


def test_after_the_first_make_run_a_manage_py_command_typed_in_a_shell_works(first_run_env_file: Path) -> None:
    code = "from django.conf import settings; print(settings.DEBUG, settings.DATABASES['default']['NAME'])"
    done = by_hand(first_run_env_file, sys.executable, "manage.py", "shell", "--no-imports", "-c", code)
    assert done.returncode == 0, done.stderr  # was: "SECRET_KEY must be set when DEBUG is off"
    assert done.stdout.split() == ["True", f"{first_run_env_file.parent}/db.sqlite3"]


def test_after_the_first_make_run_a_celery_command_typed_in_a_shell_reads_the_same(first_run_env_file: Path) -> None:
    done = by_hand(first_run_env_file, sys.executable, "-m", "celery", "-A", "project", "report")
    assert done.returncode == 0, done.stderr
    assert "\nDEBUG: True\n" in done.stdout and "\nLOG_LEVEL: 'WARNING'\n" in done.stdout
