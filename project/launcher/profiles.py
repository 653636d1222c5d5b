"""What `make run`, `make demo` and `make test` run against: a Procfile, env files and defaults.

The environment wins over the env files (later files over earlier ones), which win over the defaults:
`PORT=8600 make run` does what it says whatever `.env` holds. Except for what a profile owns: the demo's
database and Redis database are its own (DEMO_DATABASE_URL and DEMO_REDIS_URL choose others), never the
DATABASE_URL and REDIS_URL of the environment, which are the real service's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from project.envfiles import RUN_DEFAULTS, env_file_path, envfile_read
from project.launcher import ROOT

STATE_DIR = ROOT / ".run"  # ignored by git: the private Redis's data and log, the demo's generated secrets


@dataclass(frozen=True)
class Profile:
    """One way of running the service."""

    name: str
    procfile: Path | None
    env_files: tuple[Path, ...]
    secrets_file: Path | None  # where generated secrets go (None: nothing is generated)
    defaults: Mapping[str, str] = field(default_factory=dict)
    private_redis: bool = False  # may start a private Redis when REDIS_URL's local one is not running
    # Values the profile owns, with their defaults: only <NAME>_<variable> of the environment (DEMO_REDIS_URL)
    # or the profile's env files change them, never the variable itself in the environment.
    own: Mapping[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """What the environment's names for the profile's own values start with (`DEMO_`)."""
        return f"{self.name.upper()}_"


RUN = Profile("run", ROOT / "Procfile", (ROOT / ".env",), ROOT / ".env", RUN_DEFAULTS, private_redis=True)
# The demo's trades and streams are fake: they go to a database and a Redis database of its own, and it keeps
# its generated secrets apart (.env may point at a production database).
DEMO_DATABASE_URL = f"sqlite:///{ROOT / 'demo.sqlite3'}"  # beside make run's db.sqlite3; ignored by git
DEMO_REDIS_URL = "redis://127.0.0.1:6379/1"  # the local Redis (or the private one), database 1: make run's is 0
DEMO = Profile("demo", ROOT / "Procfile.demo", (ROOT / ".env.demo", STATE_DIR / "demo.env"), STATE_DIR / "demo.env",
               RUN_DEFAULTS, private_redis=True, own={"DATABASE_URL": DEMO_DATABASE_URL, "REDIS_URL": DEMO_REDIS_URL})
# What tests/settings.py uses; `make test` only checks that these answer, it never starts anything.
TESTS = Profile("tests", None, (), None, {"REDIS_URL": "redis://127.0.0.1:6379/15",
                                          "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test"})


def profile_env(profile: Profile, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The defaults, overridden by each env file in turn, overridden by the environment; the profile's own
    values from its files or <PREFIX>_<NAME>. ENV_FILE is empty: what runs with it reads no env file again."""
    environ = os.environ if environ is None else environ
    files = {**profile.defaults, **profile.own}
    for path in profile.env_files:
        files.update(envfile_read(path))
    env = {**files, **environ}
    for name in profile.own:
        env[name] = environ.get(profile.prefix + name) or files[name]
    env["ENV_FILE"] = ""
    return env


def value_source(profile: Profile, name: str, environ: Mapping[str, str] | None = None) -> str:
    """Where the value of `name` comes from: "the environment", an env file's path, or "the default"."""
    if name in (os.environ if environ is None else environ):
        return "the environment"
    for path in reversed(profile.env_files):
        if name in envfile_read(path):
            return str(path)
    return "the default"


def profile_arguments(parser: argparse.ArgumentParser) -> None:
    """--demo/--tests and the overrides tests use (another Procfile, env file, secrets file)."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--demo", action="store_const", dest="profile", const=DEMO, default=RUN,
                       help="Procfile.demo and .env.demo, against the fake exchange")
    which.add_argument("--tests", action="store_const", dest="profile", const=TESTS,
                       help="what `make test` needs (checks only)")
    parser.add_argument("--procfile", type=Path, help="another Procfile")
    parser.add_argument("--env-file", type=Path, action="append", help="env file(s) instead of the profile's")
    parser.add_argument("--secrets", type=Path, help="where generated secrets go instead of the profile's")


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The chosen profile with the command line's overrides."""
    profile: Profile = args.profile
    if profile is RUN and "ENV_FILE" in os.environ:  # the file a command typed in a shell reads, make run's too
        path = env_file_path(os.environ)
        profile = dataclasses.replace(profile, env_files=(path,) if path else (), secrets_file=path)
    if args.procfile:
        profile = dataclasses.replace(profile, procfile=args.procfile.resolve())
    if args.env_file:
        profile = dataclasses.replace(profile, env_files=tuple(path.resolve() for path in args.env_file))
    if args.secrets:
        profile = dataclasses.replace(profile, secrets_file=args.secrets.resolve())
    return profile
