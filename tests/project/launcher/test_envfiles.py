"""Env files read as honcho and docker compose read them, strictly; generated values written privately."""

from __future__ import annotations

from pathlib import Path

import pytest

from project.launcher import ROOT
from project.launcher.envfiles import EnvFileError, envfile_add, envfile_parse, envfile_read
from project.launcher.profiles import Profile, profile_env


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


def test_the_environment_wins_over_files_which_win_over_defaults(tmp_path: Path) -> None:
    first, second = tmp_path / "first.env", tmp_path / "second.env"
    first.write_text("A=file1\nB=file1\nC=file1\n")
    second.write_text("B=file2\n")
    profile = Profile("x", None, (first, second, tmp_path / "absent.env"), None, {"A": "d", "D": "d", "C": "d"})
    assert profile_env(profile, {"C": "env"}) == {"A": "file1", "B": "file2", "C": "env", "D": "d"}
