"""`make run` and `make demo`: check the machine, generate missing secrets, start a private Redis if needed,
migrate, then run the Procfile's processes (restarting those that die) and say once where everything is.

`python -m project.launcher.run [--demo] -- ARGS` runs `manage.py ARGS` with the same environment instead
(`make manage ARGS=createsuperuser`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping

from project.envfiles import EnvFileError
from project.launcher import ROOT
from project.launcher.credentials import secrets_ensure
from project.launcher.preflight import DEFAULT_REDIS_URL, machine_problems, redis_state, redis_target
from project.launcher.private_redis import PrivateRedisError, private_redis
from project.launcher.procs import Output, ProcfileError, Runner, exit_description, procfile_read
from project.launcher.profiles import Profile, profile_arguments, profile_env, profile_from_args, value_source

READY_TIMEOUT = 120.0  # s before saying that web or Flower has still not answered
GENERATED = {"FLOWER_BASIC_AUTH": "Flower's login, user admin", "SECRET_KEY": "Django's secret key, as DEBUG is off"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m project.launcher.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    profile_arguments(parser)
    parser.add_argument("manage", nargs="*", help="after --: manage.py's arguments, run with this environment")
    args = parser.parse_args(argv)
    profile = profile_from_args(args)
    try:
        generated = secrets_ensure(profile, os.environ)
        env = {"PYTHONUNBUFFERED": "1", **profile_env(profile)}
        if args.manage:
            return manage(args.manage, env)
        assert profile.procfile is not None, "the tests profile only checks"
        specs = procfile_read(profile.procfile)
    except (OSError, EnvFileError, ProcfileError) as exc:
        print(f"make {profile.name}: {exc}", file=sys.stderr)
        return 2
    output = Output(spec.name for spec in specs)
    for name in generated:
        output.system(f"generated {name} into {profile.secrets_file} ({GENERATED[name]})")
    problems = machine_problems(profile, env, os.environ)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 1
    try:
        return start(profile, env, Runner(specs, env, output, cwd=ROOT))
    except PrivateRedisError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the runner took the signals over (during migrate)
        return 130


def start(profile: Profile, env: Mapping[str, str], runner: Runner) -> int:
    """A private Redis if needed (stopped last), the database's migrations, then the runner."""
    url = env.get("REDIS_URL", DEFAULT_REDIS_URL)
    with contextlib.ExitStack() as stack:
        if redis_state(url, profile.private_redis).start_private:
            stack.callback(runner.output.system, "stopped the private Redis")  # runs after it has stopped
            folder = stack.enter_context(private_redis(
                redis_target(url), say=lambda text: runner.output.system(text, loud=True)))
            runner.output.system(f"Redis was not running at {redis_target(url).url}: started a private one "
                                 f"(append-only; data and log in {folder}/); it stops with make {profile.name}")
        if not setup(env):
            return 1
        names = {spec.name for spec in runner.specs}
        return asyncio.run(serve(runner, banner_lines(profile, env, names), ready_addresses(env, names)))


def setup(env: Mapping[str, str]) -> bool:
    """migrate and collectstatic, as `make setup` did; False (and a line) when one fails."""
    for args in (["migrate", "--noinput"], ["collectstatic", "--noinput", "--verbosity", "0"]):
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=dict(env), check=False)  # noqa: S603
        if done.returncode != 0:
            print(f"manage.py {args[0]} failed ({exit_description(done.returncode)}): its output is above",
                  file=sys.stderr)
            return False
    return True


def manage(args: list[str], env: Mapping[str, str]) -> int:
    """Become `manage.py ARGS`, with the environment `make run` gives its processes."""
    command = [sys.executable, "manage.py", *args]
    os.chdir(ROOT)
    os.execve(command[0], command, dict(env))  # noqa: S606


async def serve(runner: Runner, banner: list[str], addresses: list[tuple[str, int]]) -> int:
    """Run the processes; print the banner once every address listens."""
    announce = asyncio.create_task(_announce_when_ready(runner, banner, addresses))
    try:
        return await runner.run()
    finally:
        announce.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announce


def banner_lines(profile: Profile, env: Mapping[str, str], names: set[str]) -> list[str]:
    """What a person needs next: the pages, how to log in, how to enable a first symbol."""
    manage = "make manage" + (" DEMO=1" if profile.name == "demo" else "")
    lines = []
    if "web" in names:
        web = f"http://{_display_host(env.get('HOST'))}:{env.get('PORT') or '8000'}"
        lines += [f"live page     {web}/",
                  f"status        {web}/status/  (JSON: {web}/api/streams/, health: {web}/healthz)",
                  f"admin         {web}/admin/  (create a login: {manage} ARGS=createsuperuser)"]
    if "flower" in names:
        source = value_source(profile, "FLOWER_BASIC_AUTH")
        where = f"in {source}" if source.startswith("/") else f"from {source}"
        lines.append(f"Flower        {_flower_url(env)}/  (login: user:password of FLOWER_BASIC_AUTH, {where})")
    if profile.name == "demo":
        lines.append(f'symbols       btcusdt and ethusdt, on the fake exchange ({manage} ARGS="streams status")')
    else:
        lines.append(f'first symbol  {manage} ARGS="streams enable btcusdt"  (or in the admin: Symbol streams, Add)')
    lines.append("stop          Ctrl-C (a process that dies is restarted meanwhile)")
    return ["ready:", *(f"  {line}" for line in lines)]


def ready_addresses(env: Mapping[str, str], names: set[str]) -> list[tuple[str, int]]:
    """Where web and Flower listen once they are up (a bare connection: no request in their logs)."""
    found = []
    if "web" in names:
        found.append((_connect_host(env.get("HOST")), int(env.get("PORT") or 8000)))
    if "flower" in names:
        found.append((_connect_host(env.get("FLOWER_ADDRESS")), int(env.get("FLOWER_PORT") or 5555)))
    return found


async def _announce_when_ready(runner: Runner, banner: list[str], addresses: list[tuple[str, int]]) -> None:
    started, warned, pending = time.monotonic(), False, list(addresses)
    while pending:
        answers = await asyncio.gather(*(asyncio.to_thread(_listening, address) for address in pending))
        pending = [address for address, answered in zip(pending, answers, strict=True) if not answered]
        if pending and not warned and time.monotonic() - started > READY_TIMEOUT:
            waiting = ", ".join(f"{host}:{port}" for host, port in pending)
            runner.output.system(f"nothing listens on {waiting} after {READY_TIMEOUT:g} s: the output above says why",
                                 loud=True)
            warned = True
        if pending:
            await asyncio.sleep(0.5)  # polled: the processes do not tell when they listen
    for line in banner:
        runner.output.system(line)


def _listening(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True


def _flower_url(env: Mapping[str, str]) -> str:
    return f"http://{_display_host(env.get('FLOWER_ADDRESS'))}:{env.get('FLOWER_PORT') or '5555'}"


def _connect_host(host: str | None) -> str:
    """Where to reach a server bound to `host` from this machine."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host or "", host or "127.0.0.1")  # noqa: S104


def _display_host(host: str | None) -> str:
    """Where a browser on this machine reaches a server bound to `host`."""
    if not host or host in ("0.0.0.0", "::"):  # noqa: S104 - what the server binds, not what we bind
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    sys.exit(main())
