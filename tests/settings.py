"""Test settings: the project's settings, with PostgreSQL and Redis at the addresses CI provides."""

import os
import tempfile

# No env file (project/envfiles.py): a test must never pick up a developer's .env, nor may the processes
# it starts with the project's own settings, which inherit this.
os.environ["ENV_FILE"] = ""
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
# The lake of a test run: a folder of its own, never the checkout's lake/ (tests that seal set their own).
os.environ.setdefault("LAKE_URL", tempfile.mkdtemp(prefix="lake-tests-"))

from project.settings import *  # noqa: F403

STATIC_ROOT.mkdir(exist_ok=True)  # noqa: F405 - whitenoise serves from it (make setup runs collectstatic)

# A second, SQLite database: the embedded default's storage path is tested beside PostgreSQL's.
DATABASES["sqlite"] = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:", "TEST": {"NAME": ":memory:"}}  # noqa: F405
