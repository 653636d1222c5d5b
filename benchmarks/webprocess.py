"""The `web` process as the Procfile runs it (uvicorn with its WebSocket options), for browser tests and benchmarks."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from project.launcher.procs import procfile_read

ROOT = Path(__file__).resolve().parent.parent


def start_web(port: int, env: Mapping[str, str], *, procfile: Path = ROOT / "Procfile",
              output: int | IO[bytes] | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """The Procfile's `web` line on 127.0.0.1:`port`, through the shell as the launcher runs it (so that
    `${LIVE_MAX_FRAME:-4096}` expands from `env`); `exec` makes the returned process uvicorn itself."""
    command = procfile_read(procfile, ["web"])[0].command
    return subprocess.Popen(["/bin/sh", "-c", f"exec {command}"], cwd=ROOT,  # noqa: S603 - the project's own Procfile
                            env={**env, "HOST": "127.0.0.1", "PORT": str(port)}, stdout=output, stderr=output)


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until something accepts connections on the port; RuntimeError if the process ended first."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None:
            raise RuntimeError(f"the web process exited with {process.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
