"""`make run` and `make demo`: checks, generated secrets, a private Redis and the process runner.

Standard library only (psycopg is used when present): `make run` checks the machine with the system
Python before the virtualenv exists (so `project/__init__` imports nothing; workers.apps loads Celery).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: Procfiles, .env, .venv, manage.py
