# The two commands: `make run` checks the machine, sets up and starts the service; `make test` sets up and
# passes the tests. What the Makefile cannot install itself (Debian): the README's Quickstart, one apt-get line.
# `make run` and `make demo` read .env (generated on the first run) and the environment: see the README.

# Prefer Debian's python3.11: it is built with PGO/LTO and parses trades ~1.7x faster than a plain
# source build (pyenv's, on these machines). Any Python 3.11 works.
PYTHON ?= $(shell for p in /usr/bin/python3.11 python3.11 python3; do command -v $$p >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# What `check` looks for: --demo for make demo, --tests for make test.
PROFILE :=
# More options for project.launcher.run and its checks (the tests give another Procfile and env file).
RUN_ARGS :=
MANAGE = $(BIN)/python -m project.launcher.run $(if $(DEMO),--demo) --

# Python 3.11 first, in one line: the other checks run on it.
PYTHON_311 = v=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	[ "$$v" = 3.11 ] || { echo "Python: Python 3.11 is needed (found $${v:-none} at $(or $(PYTHON),nothing on PATH)):" \
	"sudo apt-get install python3.11 python3.11-venv" >&2; exit 1; }

.PHONY: check setup run demo manage test lint typecheck benchmark fake-exchange clean

# Before anything starts or installs: one line per missing part (Python, venv, Redis, the database, Flower's
# login), with the command that installs or starts it. Runs on the system Python, before .venv exists.
check:
	@$(PYTHON_311)
	@$(PYTHON) -m project.launcher.preflight $(PROFILE) $(RUN_ARGS)

$(STAMP): requirements/base.txt requirements/dev.txt
	@$(PYTHON_311)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	touch $(STAMP)

# The service: a private Redis if the local one is not running, migrations, then every process of the
# Procfile, restarted when one dies (project/launcher/procs.py); Ctrl-C stops them all.
run: check $(STAMP)
	$(BIN)/python -m project.launcher.run $(RUN_ARGS)

demo: PROFILE := --demo
demo: check $(STAMP)
	$(BIN)/python -m project.launcher.run --demo $(RUN_ARGS)

# manage.py with the environment `make run` gives its processes: make manage ARGS=createsuperuser
# (DEMO=1 for make demo's).
manage: $(STAMP)
	$(MANAGE) $(ARGS)

setup: $(STAMP)
	$(MANAGE) migrate --noinput
	$(MANAGE) collectstatic --noinput --verbosity 0

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy streams/binance streams/fake project/launcher

test: PROFILE := --tests
test: check $(STAMP) lint typecheck
	$(BIN)/pytest --ds=tests.settings

benchmark: setup
	$(MANAGE) benchmark

fake-exchange: setup
	$(MANAGE) fake_exchange --ws-port 9443 --rest-port 9444 --symbols btcusdt:50,ethusdt:20

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
