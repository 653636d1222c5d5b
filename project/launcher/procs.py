"""The process runner: a Procfile's processes, kept up (honcho stops them all when one dies).

`python -m project.launcher.procs [-f Procfile] [-e .env[,more]] [name ...]` starts each process through the shell
(so `${VAR:-default}` expands as under honcho), in a process group of its own, its output prefixed with
`HH:MM:SS name | ` (coloured on a terminal). A process that exits non-zero or is killed is restarted after a
capped, fully jittered exponential backoff; one that exits 0 has finished (a one-shot, such as the demo's
`enable`) and is not restarted. SIGINT and SIGTERM are forwarded to every process group (SIGHUP as SIGTERM);
what is still running `--grace` seconds later gets SIGKILL, and a second signal kills at once.
Exit status: 0 after a clean stop, 1 when stopped after a failure (an unexpected exit, a SIGKILL at the
deadline), 2 when it cannot start at all (a bad Procfile or env file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from project.envfiles import EnvFileError
from project.launcher.profiles import Profile, profile_env
from streams.binance.backoff import RETRY, Backoff

PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")  # honcho's; other lines (comments) are skipped
COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")  # ANSI, one per process, as honcho
LINE_LIMIT = 1 << 20  # bytes; a longer line is dropped (and says so)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ProcfileError(ValueError):
    """The Procfile cannot be run."""


@dataclass(frozen=True)
class ProcessSpec:
    """One line of a Procfile."""

    name: str
    command: str


_RESTART = RETRY["process restart"]


@dataclass(frozen=True)
class RestartPolicy:
    """When a dead process starts again: exponential backoff with full jitter, capped."""

    base: float = _RESTART.base
    cap: float = _RESTART.cap
    stable_after: float = _RESTART.reset_after  # s; a process that ran this long starts its backoff afresh
    loud_after: int = 5  # quick deaths in a row before the runner shouts about it (then every 20th)

    def shout(self, failures: int) -> bool:
        """Whether this many quick deaths in a row deserve a loud line."""
        return failures == self.loud_after or (failures > self.loud_after and failures % 20 == 0)

    def delay(self, failures: int, rng: random.Random) -> float:
        """Uniform over [0, min(cap, base * 2^(failures - 1))]: restarts of many processes spread out. The
        project's one retry schedule (streams/binance/backoff.py: standard library only, like this runner)."""
        return Backoff(self.base, self.cap, rng=rng, attempt=failures - 1).next_delay()


def procfile_parse(text: str, source: str = "Procfile") -> list[ProcessSpec]:
    """The `name: command` lines, in order."""
    specs: list[ProcessSpec] = []
    for line in text.splitlines():
        match = PROCFILE_LINE.match(line)
        if not match:
            continue
        if any(spec.name == match[1] for spec in specs):
            raise ProcfileError(f"{source}: process {match[1]!r} is declared twice")
        specs.append(ProcessSpec(match[1], match[2].strip()))
    if not specs:
        raise ProcfileError(f"{source}: no processes (each line is `name: command`)")
    return specs


def procfile_read(path: Path, names: Iterable[str] = ()) -> list[ProcessSpec]:
    """The processes of the Procfile at `path`, or only those named."""
    specs = procfile_parse(path.read_text(encoding="utf-8"), str(path))
    wanted = list(names)
    unknown = sorted(set(wanted) - {spec.name for spec in specs})
    if unknown:
        raise ProcfileError(f"{path}: no process named {', '.join(unknown)}")
    return [spec for spec in specs if not wanted or spec.name in wanted]


def exit_description(code: int) -> str:
    """`exit code 3`, or `exit code -9, SIGKILL` for a process killed by a signal."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"exit code {code}, {signal.Signals(-code).name}"
    return f"exit code {code}"


def group_members(pgid: int) -> Iterator[tuple[int, str]]:
    """(pid, state) of each process in the process group, read from /proc (Linux)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid:
            yield int(entry.name), fields[0]


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: an orphan's zombie stays in the
    group for ever under an init that does not reap (as in some containers) and would hold every stop."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc/self/stat").exists():
        return True
    return any(state != "Z" for _, state in group_members(pgid))


def group_signal(pgid: int, sig: int) -> None:
    """Send `sig` to every process of the group, if any is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Output:
    """Prefixed lines, `HH:MM:SS name | text`, the prefix coloured when writing to a terminal."""

    def __init__(self, names: Iterable[str], stream: TextIO | None = None, colour: bool | None = None) -> None:
        names = list(names)
        self.stream = stream or sys.stdout
        self.width = max(len(name) for name in [*names, "system"])
        self.colour = (self.stream.isatty() and "NO_COLOR" not in os.environ) if colour is None else colour
        self._codes = {name: COLOURS[index % len(COLOURS)] for index, name in enumerate(names)}

    def line(self, name: str, text: str, loud: bool = False) -> None:
        prefix = f"{time.strftime('%H:%M:%S')} {name:<{self.width}} | "
        if self.colour:
            prefix = f"\x1b[{'1;31' if loud else self._codes.get(name, '1')}m{prefix}\x1b[0m"
        elif loud:
            text = f"!! {text}"
        # Nowhere is left to report a closed stdout to (`make run | head`): the processes go on regardless.
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.stream.write(f"{prefix}{text}\n")
            self.stream.flush()

    def system(self, text: str, loud: bool = False) -> None:
        """A line of the runner's own."""
        self.line("system", text, loud)


@dataclass
class Runner:
    """Starts every process, restarts the ones that die, and stops them all on a signal."""

    specs: list[ProcessSpec]
    env: Mapping[str, str]
    output: Output
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    grace: float = 20.0  # s between the stop signal and SIGKILL (the streams worker needs up to 15 s)
    cwd: Path | None = None
    rng: random.Random = field(default_factory=random.Random)
    failed: bool = field(default=False, init=False)  # a process exited unexpectedly, or had to be killed
    deaths: Counter[str] = field(default_factory=Counter, init=False)  # unexpected exits, per process
    stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _kill_now: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _signal: int = field(default=signal.SIGTERM, init=False)
    _stop_asked: float = field(default=0.0, init=False)  # monotonic time of the first stop signal

    async def run(self) -> int:
        """Run until every process has finished or a stop signal has stopped them; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stop, sig)
        try:
            async with asyncio.TaskGroup() as group:
                for spec in self.specs:
                    group.create_task(self._supervise(spec), name=spec.name)
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
        self.output.system(self._summary())
        return 1 if self.stopping.is_set() and self.failed else 0

    def _summary(self) -> str:
        deaths = ", ".join(f"{name} {count}" for name, count in sorted(self.deaths.items()))
        killed = "; some had to be killed" if self.failed and not deaths else ""
        return f"every process has stopped{'; unexpected exits: ' + deaths if deaths else ''}{killed}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Forward `sig` to every process (SIGHUP as SIGTERM); a second call kills them at once. A second
        signal within a second is the same stop arriving twice (SIGTERM to `make run`'s process group
        reaches the runner directly and again through make, which forwards it), not a second Ctrl-C."""
        name = signal.Signals(sig).name
        if self.stopping.is_set():
            if time.monotonic() - self._stop_asked < 1.0:
                return
            self.output.system(f"{name} again: killing every process now", loud=True)
            self._kill_now.set()
            return
        self._signal = signal.SIGTERM if sig == signal.SIGHUP else sig
        self._stop_asked = time.monotonic()
        self.output.system(f"{name}: stopping every process (SIGKILL after {self.grace:g} s; again to kill now)")
        self.stopping.set()

    async def _supervise(self, spec: ProcessSpec) -> None:
        failures = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            code = await self._run_once(spec)
            if code is None:
                return
            if code == 0:
                self.output.system(f"{spec.name} exited 0: finished, not restarted")
                return
            self.failed = True
            self.deaths[spec.name] += 1
            if self.stopping.is_set():
                return
            failures = 1 if time.monotonic() - started >= self.policy.stable_after else failures + 1
            await self._wait_to_restart(spec.name, code, failures)

    async def _wait_to_restart(self, name: str, code: int, failures: int) -> None:
        delay = self.policy.delay(failures, self.rng)
        self.output.system(f"restarting {name} in {delay:.1f} s ({exit_description(code)})")
        if self.policy.shout(failures):
            self.output.system(
                f"{name} keeps dying: {failures} times in a row, each within {self.policy.stable_after:g} s of its "
                f"start; still restarting it, at most {self.policy.cap:g} s apart: its output above says why",
                loud=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)

    async def _run_once(self, spec: ProcessSpec) -> int | None:
        """Run the process until it exits (its exit code) or the runner stops it (None)."""
        try:
            child = await asyncio.create_subprocess_shell(
                spec.command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=dict(self.env), cwd=self.cwd, start_new_session=True,
                limit=LINE_LIMIT)
        except OSError as exc:
            self.output.system(f"cannot start {spec.name}: {exc}", loud=True)
            return 127
        assert child.stdout is not None
        pump = asyncio.create_task(self._pump(spec.name, child.stdout))
        try:
            if await self._exits_before_stop(child):
                group_signal(child.pid, signal.SIGKILL)  # what it left behind would be a second copy
                assert child.returncode is not None
                return child.returncode
            await self._terminate(spec.name, child)
            return None
        finally:
            await _finish(pump)

    async def _exits_before_stop(self, child: asyncio.subprocess.Process) -> bool:
        exited = asyncio.create_task(child.wait())
        stopping = asyncio.create_task(self.stopping.wait())
        done, pending = await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return exited in done

    async def _terminate(self, name: str, child: asyncio.subprocess.Process) -> None:
        group_signal(child.pid, self._signal)
        if await self._group_gone(child, self.grace):
            return
        if not self._kill_now.is_set():
            self.output.system(f"{name} still running {self.grace:g} s after {signal.Signals(self._signal).name}: "
                               "SIGKILL", loud=True)
            self.failed = True
        group_signal(child.pid, signal.SIGKILL)
        await self._group_gone(child, 5.0, interruptible=False)

    async def _group_gone(self, child: asyncio.subprocess.Process, timeout: float, interruptible: bool = True) -> bool:
        """Wait until the whole process group has exited (the shell may go before its command does), or a
        second stop signal. Polled: nothing notifies the end of processes that are not our children."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (interruptible and self._kill_now.is_set()):
            if child.returncode is not None and not group_alive(child.pid):
                return True
            await asyncio.sleep(0.05)
        return child.returncode is not None and not group_alive(child.pid)

    async def _pump(self, name: str, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                self.output.line(name, f"[a line longer than {LINE_LIMIT} bytes was dropped]")
                continue
            if not line:
                return
            self.output.line(name, line.decode("utf-8", "replace").rstrip("\r\n"))


async def _finish(pump: asyncio.Task[None]) -> None:
    """Let the output pump reach the end of the pipe; a daemon the process left may hold it open."""
    await asyncio.wait({pump}, timeout=1.0)
    if not pump.done():
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m project.launcher.procs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", "--procfile", type=Path, default=Path("Procfile"))
    parser.add_argument("-e", "--env", action="append", default=None,
                        help="env file(s), comma-separated or repeated; the environment wins (default: .env)")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds between the stop signal and SIGKILL")
    parser.add_argument("--backoff-base", type=float, default=_RESTART.base, help="seconds, the first restart's bound")
    parser.add_argument("--backoff-cap", type=float, default=_RESTART.cap, help="seconds, the largest restart delay")
    parser.add_argument("--stable-after", type=float, default=_RESTART.reset_after,
                        help="seconds of running that reset backoff")
    parser.add_argument("names", nargs="*", help="only these processes")
    args = parser.parse_args(argv)
    env_files = tuple(Path(name) for value in (args.env or [".env"]) for name in value.split(",") if name)
    try:
        specs = procfile_read(args.procfile, args.names)
        env = profile_env(Profile("procs", args.procfile, env_files, None))
    except (OSError, ProcfileError, EnvFileError) as exc:
        print(f"procs: cannot start: {exc}", file=sys.stderr)
        return 2
    policy = RestartPolicy(args.backoff_base, args.backoff_cap, args.stable_after)
    runner = Runner(specs, {"PYTHONUNBUFFERED": "1", **env}, Output(spec.name for spec in specs), policy, args.grace)
    return asyncio.run(runner.run())


if __name__ == "__main__":
    sys.exit(main())
