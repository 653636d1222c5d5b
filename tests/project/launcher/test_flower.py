"""Flower as the project starts it: on 127.0.0.1, never without a real user:password, `Basic !` refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from project.launcher.flower import basic_auth_problem, flower_command
from tests.helpers import ROOT, free_port, wait_for


@pytest.mark.parametrize(("value", "message"), [
    (None, "is not set"),
    ("", "is not set"),
    ("   ", "is not set"),
    ("adminsecret", "has no colon"),
    (":secret", "empty user or password"),
    ("admin:", "empty user or password"),
    ("watcher:7f3kq9-xw2p1,admin:", "empty user or password"),  # Flower splits on commas: every login is checked
    ("admin:change-me", "the known default admin:change-me"),
    # Seen: Flower started with admin:admin, admin:password and a 6-character password.
    ("admin:admin", "at least 12 characters"),
    ("ops:short-pw", "at least 12 characters"),
    ("admin:password1234", "too common"),
    ("admin:flowerflower", "too common"),
    ("watcher:watcher-watcher", "repeats the user name"),
    ("ok:Zq3-long-random,admin:secret", "at least 12 characters"),  # every login of the list
])
def test_it_refuses_anything_but_a_real_user_and_password(value: str | None, message: str) -> None:
    problem = basic_auth_problem(value)
    assert problem is not None and message in problem


def test_real_logins_pass() -> None:
    assert basic_auth_problem("admin:Zq3-long-random") is None
    assert basic_auth_problem("watcher:7f3kq9-xw2p1,ops:another-long-one") is None


def test_it_binds_to_loopback_unless_told_otherwise() -> None:
    assert "--address=127.0.0.1" in flower_command(["--port=1"], {})
    everywhere = "0.0.0.0"  # noqa: S104 - what a user may ask for with FLOWER_ADDRESS
    assert f"--address={everywhere}" in flower_command(["--port=1"], {"FLOWER_ADDRESS": everywhere})
    assert flower_command(["--address=::1"], {"FLOWER_ADDRESS": everywhere}).count("--address=::1") == 1
    assert not any(arg.startswith("--basic-auth") for arg in flower_command([], {"FLOWER_BASIC_AUTH": "a:b"}))


@pytest.mark.parametrize(("env", "args", "message"), [
    ({"FLOWER_BASIC_AUTH": ""}, [], "FLOWER_BASIC_AUTH is not set"),
    ({"FLOWER_BASIC_AUTH": "admin:change-me"}, [], "known default"),
    ({"FLOWER_BASIC_AUTH": "a:b"}, ["--basic-auth="], "FLOWER_BASIC_AUTH is not set"),
    ({"FLOWER_BASIC_AUTH": "a:7f3kq9-xw2p1", "FLOWER_UNAUTHENTICATED_API": "true"}, [], "FLOWER_UNAUTHENTICATED_API"),
])
def test_the_wrapper_refuses_to_start_flower_in_one_line(env: dict[str, str], args: list[str], message: str) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    done = subprocess.run([sys.executable, "-m", "project.launcher.flower", "--port=1", *args], cwd=ROOT,
                          env={**base, **env}, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("flower: refusing to start: ")
    assert message in done.stderr


@pytest.mark.slow
def test_the_flower_the_project_starts_refuses_basic_bang_and_listens_on_loopback_only() -> None:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}, "DEBUG": "1",
           "DJANGO_SETTINGS_MODULE": "project.settings", "REDIS_URL": settings.REDIS_URL,
           "FLOWER_BASIC_AUTH": "watcher:7f3kq9-xw2p1"}
    command = _procfile_command("flower").replace("${FLOWER_ADDRESS:-127.0.0.1}", "127.0.0.1")
    command = command.replace("${FLOWER_PORT:-5555}", str(port)).replace(".venv/bin/python", sys.executable)
    flower = subprocess.Popen(["sh", "-c", f"exec {command}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/tasks"
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthcheck"), timeout=60)
        assert httpx.get(url, headers={"Authorization": "Basic !"}).status_code == 401  # the empty-login trap
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, auth=("watcher", "wrong")).status_code == 401
        assert httpx.get(url, auth=("watcher", "7f3kq9-xw2p1")).status_code == 200
        assert _listening_addresses(port) == ["127.0.0.1"]
        assert "watcher:7f3kq9-xw2p1" not in Path(f"/proc/{flower.pid}/cmdline").read_text(errors="replace")
    finally:
        flower.terminate()
        flower.wait(timeout=30)


def _procfile_command(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.partition(":")[2].strip()
    raise AssertionError(f"no {name} in the Procfile")



def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _listening_addresses(port: int) -> list[str]:
    """The local addresses listening on `port`, from /proc/net/tcp and tcp6 (state 0A is LISTEN)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                found.append(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6,
                                              b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))))
    return found


def test_started_by_hand_it_takes_the_login_from_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FLOWER_BASIC_AUTH=admin:change-me\n")  # refused: it shows that the file was read
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_") and k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run([sys.executable, "-m", "project.launcher.flower"], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "ENV_FILE": str(env_file)}, timeout=30, check=False)
    assert done.returncode == 1
    assert "FLOWER_BASIC_AUTH is the known default admin:change-me" in done.stderr
