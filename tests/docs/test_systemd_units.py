"""The systemd units of docs/deployment/systemd/: one per Procfile process, each running its Procfile line,
restarted whenever it exits; and systemd's own checker finds nothing to say about them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "docs" / "deployment" / "systemd"
CHECKOUT = "/opt/collector"  # where the units expect the checkout (docs/deployment.md)
ENV_FILE = "/etc/collector/collector.env"


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def unit(name: str) -> dict[str, str]:
    """`Key=value` of every section, comments left out (no key repeats in these units)."""
    pairs = [line.split("=", 1) for line in (UNITS / name).read_text().splitlines()
             if "=" in line and not line.startswith(("#", ";"))]
    return {key: value for key, value in pairs}


def environment(values: dict[str, str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in values.get("Environment", "").split())


@pytest.mark.parametrize("process", sorted(procfile()))
def test_each_procfile_process_has_a_unit_that_runs_its_line(process: str) -> None:
    values = unit(f"collector-{process}.service")
    command = procfile()[process]
    defaults = dict(re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", command))
    assert environment(values) == defaults  # the Procfile's defaults, which the EnvironmentFile overrides
    expected = re.sub(r"\$\{([A-Z_]+):-[^}]*\}", r"${\1}", command).replace(".venv/bin/", f"{CHECKOUT}/.venv/bin/")
    assert values["ExecStart"].replace("%%", "%") == expected  # %% is systemd's escape for %
    assert values["WorkingDirectory"] == CHECKOUT and values["EnvironmentFile"] == ENV_FILE
    assert values["Restart"] == "always" and values["StartLimitIntervalSec"] == "0"  # never gives up
    assert values["User"] == "collector" and values["NoNewPrivileges"] == "yes"
    assert values["PartOf"] == "collector.target" and values["WantedBy"] == "collector.target"


def test_the_target_wants_every_unit_and_nothing_else() -> None:
    wanted = set(unit("collector.target")["Wants"].split())
    assert wanted == {f"collector-{process}.service" for process in procfile()}
    assert {path.name for path in UNITS.glob("*.service")} == wanted


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    # verify needs every ExecStart binary to exist: the units are rendered with this checkout for
    # /opt/collector and the venv running the tests for its .venv.
    env_file = tmp_path / "collector.env"
    env_file.write_text("DEBUG=0\n")
    venv_bin = str(Path(sys.executable).parent)
    for path in UNITS.iterdir():
        text = path.read_text().replace(f"{CHECKOUT}/.venv/bin", venv_bin).replace(CHECKOUT, str(ROOT))
        (tmp_path / path.name).write_text(text.replace(ENV_FILE, str(env_file)))
    names = sorted(path.name for path in tmp_path.iterdir() if path.suffix in (".service", ".target"))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *names], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_verify_would_see_a_broken_unit(tmp_path: Path) -> None:
    (tmp_path / "broken.service").write_text("[Service]\nExecStart=/nonexistent/binary\nRestart=alwayz\n")
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", "broken.service"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "alwayz" in result.stderr
