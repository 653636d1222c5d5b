"""What `make run` prints once everything is up: the pages, the logins, the first symbol."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from project.launcher.profiles import DEMO, RUN
from project.launcher.run import banner_lines, ready_addresses


def test_the_banner_says_what_a_person_needs_next(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FLOWER_BASIC_AUTH=admin:7f3kq9-xw2p1\n")
    profile = dataclasses.replace(RUN, env_files=(env_file,), secrets_file=env_file)
    env = {"PORT": "8600", "FLOWER_PORT": "5655", "HOST": "0.0.0.0"}  # noqa: S104 - web on every interface
    text = "\n".join(banner_lines(profile, env, {"web", "flower", "streams"}))
    assert "live page     http://127.0.0.1:8600/" in text
    assert "http://127.0.0.1:8600/status/" in text and "http://127.0.0.1:8600/admin/" in text
    assert "create a login: make manage ARGS=createsuperuser" in text
    assert f"Flower        http://127.0.0.1:5655/  (login: user:password of FLOWER_BASIC_AUTH, in {env_file})" in text
    assert 'make manage ARGS="streams enable btcusdt"' in text
    assert ready_addresses(env, {"web", "flower"}) == [("127.0.0.1", 8600), ("127.0.0.1", 5655)]


def test_the_demo_banner_points_at_the_demo(tmp_path: Path) -> None:
    profile = dataclasses.replace(DEMO, env_files=(tmp_path / "demo.env",))
    text = "\n".join(banner_lines(profile, {"FLOWER_ADDRESS": "::1"}, {"web", "flower"}))
    assert "make manage DEMO=1 ARGS=createsuperuser" in text and "btcusdt and ethusdt" in text
    assert "Flower        http://[::1]:5555/" in text
