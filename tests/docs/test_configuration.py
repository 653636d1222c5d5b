"""docs/configuration.md lists every setting: each one `.env.example` holds, each one project/settings.py
reads, each one the Procfile expands, and nothing else in its settings table."""

from __future__ import annotations

import re
from pathlib import Path

from project.envfiles import envfile_read

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- settings-table:"


def documented_settings() -> set[str]:
    """The names in the first column of the table after the marker."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert MARKER in text, "docs/configuration.md lost the marker before its settings table"
    table = text.split(MARKER, 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_every_setting_of_env_example_is_documented_and_nothing_else() -> None:
    example = set(envfile_read(ROOT / ".env.example"))
    documented = documented_settings()
    assert example - documented == set(), "in .env.example, not in docs/configuration.md"
    assert documented - example == set(), "in docs/configuration.md's settings table, not in .env.example"


def test_every_setting_the_settings_read_is_documented() -> None:
    read = set(re.findall(r"env_\w+\(\s*\"([A-Z][A-Z0-9_]+)\"", (ROOT / "project" / "settings.py").read_text()))
    assert len(read) > 40  # the pattern still finds them
    assert read - documented_settings() == set()


def test_every_variable_the_procfiles_expand_is_documented() -> None:
    expanded = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", (ROOT / "Procfile").read_text()))
    assert {"HOST", "PORT", "STREAMS_CONCURRENCY"} <= expanded
    assert expanded - documented_settings() == set()
