"""Settings come from the environment through strict readers; a bad value names the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from django.core.exceptions import ImproperlyConfigured

from project.env import env_bool, env_float, env_int, env_list


def test_strict_readers_accept_good_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_BOOL", "yes")
    monkeypatch.setenv("X_INT", "42")
    monkeypatch.setenv("X_FLOAT", "0.5")
    monkeypatch.setenv("X_LIST", "a.example, b.example,")
    assert env_bool("X_BOOL", False) is True
    assert env_int("X_INT", 1, minimum=0) == 42
    assert env_float("X_FLOAT", 1.0) == 0.5
    assert env_list("X_LIST", []) == ["a.example", "b.example"]
    assert env_int("X_UNSET_INT", 7) == 7


@pytest.mark.parametrize(
    ("reader", "value", "message"),
    [
        (lambda: env_bool("X_BAD", False), "maybe", "X_BAD='maybe' is not a boolean"),
        (lambda: env_int("X_BAD", 1), "ten", "X_BAD='ten' is not an integer"),
        (lambda: env_int("X_BAD", 1, minimum=1), "0", "X_BAD=0 is below its minimum 1"),
        (lambda: env_float("X_BAD", 1.0), "fast", "X_BAD='fast' is not a number"),
    ],
)
def test_a_bad_value_raises_naming_the_variable(monkeypatch: pytest.MonkeyPatch, reader: Callable[[], object],
                                                value: str, message: str) -> None:
    monkeypatch.setenv("X_BAD", value)
    with pytest.raises(ImproperlyConfigured, match=message.replace("(", r"\(")):
        reader()


def test_production_refuses_to_start_without_a_secret_key() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    env.update(DEBUG="0", DJANGO_SETTINGS_MODULE="project.settings")
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr
