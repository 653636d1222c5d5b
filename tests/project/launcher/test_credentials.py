"""The first `make run` generates Flower's login (and SECRET_KEY when DEBUG is off); nothing known is shipped."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from project.envfiles import envfile_read
from project.launcher.credentials import secrets_ensure
from project.launcher.flower import basic_auth_problem
from project.launcher.profiles import RUN, Profile


def profile_in(tmp_path: Path) -> Profile:
    env = tmp_path / ".env"
    return dataclasses.replace(RUN, env_files=(env,), secrets_file=env)


def test_the_first_run_generates_a_real_flower_login_once(tmp_path: Path) -> None:
    profile = profile_in(tmp_path)
    assert secrets_ensure(profile, {}) == ["FLOWER_BASIC_AUTH"]  # DEBUG=1 by default: no SECRET_KEY needed
    login = envfile_read(tmp_path / ".env")["FLOWER_BASIC_AUTH"]
    user, _, password = login.partition(":")
    assert user == "admin" and len(password) >= 20 and basic_auth_problem(login) is None
    assert secrets_ensure(profile, {}) == []
    assert envfile_read(tmp_path / ".env")["FLOWER_BASIC_AUTH"] == login
    other = tmp_path / "other"
    other.mkdir()
    secrets_ensure(profile_in(other), {})
    assert envfile_read(other / ".env")["FLOWER_BASIC_AUTH"] != login, "random, not a default"


def test_with_debug_off_a_secret_key_is_generated_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DEBUG=0\nSECRET_KEY=\n")
    assert secrets_ensure(profile_in(tmp_path), {}) == ["FLOWER_BASIC_AUTH", "SECRET_KEY"]
    assert len(envfile_read(tmp_path / ".env")["SECRET_KEY"]) >= 50


def test_nothing_is_generated_for_what_the_environment_or_the_file_sets(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FLOWER_BASIC_AUTH=ops:mine\n")
    assert secrets_ensure(profile_in(tmp_path), {"DEBUG": "0", "SECRET_KEY": "from-env"}) == []
    assert secrets_ensure(profile_in(tmp_path / ".."), {"FLOWER_BASIC_AUTH": "a:b"}) == []
