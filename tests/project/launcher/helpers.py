"""The launcher tests' helpers: commands started with their output collected as it comes, free ports, pids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.helpers import ROOT

CHILD = ROOT / "tests" / "project" / "launcher" / "child.py"


class Started:
    """A command started in a session of its own, its output lines collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        """Cleanup after a failed test: SIGTERM to the session's process group (the runner then stops its
        processes, which live in groups of their own), SIGKILL if that is not enough."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def runner(procfile: Path, *options: str, env: dict[str, str] | None = None) -> Started:
    return Started([sys.executable, "-m", "project.launcher.procs", "-f", str(procfile), "-e", os.devnull,
                    "--backoff-base", "0.05", "--backoff-cap", "0.2", *options], env)


def child_line(name: str, folder: Path, *options: str) -> str:
    """A Procfile line: the child writes its pid into folder/name.pid (through the shell, as in real use)."""
    return f"{name}: {sys.executable} {CHILD} {folder / name}.pid {' '.join(options)}".rstrip()


def pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def running(pid: int | None) -> bool:
    """Whether the process exists and is not a zombie (an orphan's zombie may stay under a non-reaping init)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (the test's temporary folder, say)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and running(int(entry.name)):
                found.append(int(entry.name))
    return found
