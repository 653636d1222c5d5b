"""The process runner keeps a Procfile's processes up: a dead one restarts, a signal stops them all."""

from __future__ import annotations

import io
import os
import random
import signal
from pathlib import Path

import pytest

from project.launcher.procs import Output, ProcfileError, RestartPolicy, exit_description, procfile_parse
from tests.helpers import wait_for
from tests.project.launcher.helpers import child_line, pid_in, processes_mentioning, runner, running


def test_it_reads_a_procfile_as_honcho_does() -> None:
    specs = procfile_parse("# the service\nweb: uvicorn app --port ${PORT:-8000}\n\nworker-2: celery worker\n")
    assert [(spec.name, spec.command) for spec in specs] == [
        ("web", "uvicorn app --port ${PORT:-8000}"), ("worker-2", "celery worker")]


@pytest.mark.parametrize(("text", "message"), [("", "no processes"), ("a: x\na: y\n", "'a' is declared twice")])
def test_it_refuses_a_procfile_it_cannot_run(text: str, message: str) -> None:
    with pytest.raises(ProcfileError, match=message):
        procfile_parse(text)


def test_restart_delays_are_full_jitter_capped() -> None:
    policy, rng = RestartPolicy(base=1.0, cap=30.0), random.Random(1)
    for failures, bound in [(1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (500, 30.0)]:
        delays = [policy.delay(failures, rng) for _ in range(200)]
        assert all(0.0 <= delay <= bound for delay in delays)
        assert max(delays) > bound * 0.8  # the whole range is drawn from, not only its bottom


def test_it_shouts_at_the_fifth_quick_death_and_every_twentieth_after() -> None:
    policy = RestartPolicy(loud_after=5)
    assert [n for n in range(1, 61) if policy.shout(n)] == [5, 20, 40, 60]


def test_exit_descriptions_name_the_signal() -> None:
    assert exit_description(3) == "exit code 3"
    assert exit_description(-9) == "exit code -9, SIGKILL"


def test_output_lines_are_prefixed_and_coloured_only_when_asked() -> None:
    plain, coloured = io.StringIO(), io.StringIO()
    Output(["web", "streams"], plain, colour=False).line("web", "hello")
    Output(["web", "streams"], coloured, colour=True).line("streams", "hi")
    assert plain.getvalue().endswith(" web     | hello\n")
    assert "\x1b[33m" in coloured.getvalue() and coloured.getvalue().endswith("\x1b[0mhi\n")


@pytest.mark.slow
def test_a_killed_process_is_restarted_and_a_sigterm_stops_everything(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"{child_line('a', tmp_path)}\n{child_line('b', tmp_path)}\n")
    started = runner(procfile, "--grace", "5")
    try:
        first_a = wait_for(lambda: pid_in(tmp_path / "a.pid"), timeout=30)
        first_b = wait_for(lambda: pid_in(tmp_path / "b.pid"), timeout=30)
        os.kill(first_a, signal.SIGKILL)
        second_a = wait_for(lambda: (pid := pid_in(tmp_path / "a.pid")) != first_a and running(pid) and pid, 30)
        assert started.process.poll() is None, "the runner must outlive one of its processes"
        assert running(first_b) and pid_in(tmp_path / "b.pid") == first_b, "the other process is left alone"
        assert started.said("restarting a in ") and started.said("(exit code 137)")  # 128 + 9, from the shell
        os.kill(started.process.pid, signal.SIGTERM)
        assert started.wait(30) == 1, "stopped after a failure: non-zero"
    finally:
        started.kill()
    assert not running(second_a) and not running(first_b)
    assert processes_mentioning(str(tmp_path)) == [], "every child and its shell are gone"
    assert started.said("every process has stopped; unexpected exits: a 1")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_without_failures_exits_zero(tmp_path: Path, sig: signal.Signals) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"{child_line('a', tmp_path)}\n")
    started = runner(procfile)
    try:
        pid = wait_for(lambda: pid_in(tmp_path / "a.pid"), timeout=30)
        os.kill(started.process.pid, sig)
        assert started.wait(30) == 0
    finally:
        started.kill()
    assert not running(pid)
    assert started.said(f"{sig.name}: stopping every process")


@pytest.mark.slow
def test_a_process_that_exits_zero_has_finished_and_one_that_fails_is_retried_loudly(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    once, crash = child_line("once", tmp_path, "--exit", "0"), child_line("crash", tmp_path, "--exit", "3")
    procfile.write_text(f"{once}\n{crash}\n")
    started = runner(procfile, "--stable-after", "60")
    try:
        wait_for(lambda: started.said("crash keeps dying: 5 times in a row"), timeout=60)
        assert started.process.poll() is None
        os.kill(started.process.pid, signal.SIGTERM)
        assert started.wait(30) == 1
    finally:
        started.kill()
    assert started.said("once exited 0: finished, not restarted")
    assert sum("child" in line and "once" in line for line in started.lines) == 1, "started once only"
    assert started.said("restarting crash in ") and started.said("(exit code 3)")
    assert started.said("!! crash keeps dying")  # loud: marked when not on a terminal


@pytest.mark.slow
def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"{child_line('stubborn', tmp_path, '--ignore-term')}\n")
    started = runner(procfile, "--grace", "1")
    try:
        pid = wait_for(lambda: pid_in(tmp_path / "stubborn.pid"), timeout=30)
        wait_for(lambda: started.said("child"), timeout=30)  # up, with its SIGTERM handler set
        os.kill(started.process.pid, signal.SIGTERM)
        assert started.wait(30) == 1, "a process had to be killed: non-zero"
    finally:
        started.kill()
    assert not running(pid)
    assert started.said("stubborn still running 1 s after SIGTERM: SIGKILL")


def test_it_cannot_start_without_a_procfile(tmp_path: Path) -> None:
    started = runner(tmp_path / "missing")
    assert started.wait(30) == 2
    assert started.said("procs: cannot start:")
