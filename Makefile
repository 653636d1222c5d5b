# The two commands: `make run` checks the machine, sets up and starts the service; `make test` sets up and
# passes the tests. What the Makefile cannot install itself (Debian): the README's Quickstart, one apt-get line.
# `make run` reads .env (generated on the first run) and the environment, as manage.py and celery typed in a
# shell do; `make demo` reads .env.demo and keeps its own database and Redis database: see docs/operating.md.

# Prefer Debian's python3.11: it is built with PGO/LTO and parses trades ~1.7x faster than a plain
# source build (pyenv's, on these machines). Any Python 3.11 works.
PYTHON ?= $(shell for p in /usr/bin/python3.11 python3.11 python3; do command -v $$p >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHART := web/static/web/vendor/lightweight-charts.standalone.production.js
# What `check` looks for: --demo for make demo, --tests for make test.
PROFILE :=
# More options for project.launcher.run and its checks (the tests give another Procfile and env file).
RUN_ARGS :=
MANAGE = $(BIN)/python -m project.launcher.run $(if $(DEMO),--demo) --

# Python 3.11 first, in one line: the other checks run on it.
PYTHON_311 = v=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	[ "$$v" = 3.11 ] || { echo "Python: Python 3.11 is needed (found $${v:-none} at $(or $(PYTHON),nothing on PATH)):" \
	"sudo apt-get install python3.11 python3.11-venv" >&2; exit 1; }

.PHONY: check setup run demo manage test lint typecheck monitoring-check benchmark fake-exchange clean

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
run: check $(STAMP) $(CHART)
	$(BIN)/python -m project.launcher.run $(RUN_ARGS)

demo: PROFILE := --demo
demo: check $(STAMP) $(CHART)
	$(BIN)/python -m project.launcher.run --demo $(RUN_ARGS)

# manage.py with the environment `make run` gives its processes: make manage ARGS=createsuperuser, the same as
# .venv/bin/python manage.py createsuperuser; DEMO=1 for make demo's (its database, Redis and fake exchange).
manage: $(STAMP)
	$(MANAGE) $(ARGS)

# The live page's chart library (TradingView's lightweight-charts, pinned by web/package-lock.json): npm ci,
# then its standalone build copied into the static files; nothing is loaded from the internet at run time.
$(CHART): web/package.json web/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm: not found (the live page's chart is built with it):" \
		"sudo apt-get install nodejs npm" >&2; exit 1; }
	cd web && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(@D)
	cp web/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js $@

setup: $(STAMP) $(CHART)
	$(MANAGE) migrate --noinput
	$(MANAGE) collectstatic --noinput --verbosity 0

lint: $(STAMP)
	$(BIN)/ruff check .

# mypy over the whole tree, strict, with the Django plugin: pyproject.toml's [tool.mypy] names the files.
typecheck: $(STAMP)
	$(BIN)/mypy

# The Prometheus alert rules (workers/monitoring/): their syntax, and their unit tests (alerts.test.yml). What
# /metrics renders goes through `promtool check metrics` in tests/workers/test_metrics.py.
monitoring-check:
	@command -v promtool >/dev/null 2>&1 || { echo "promtool: not found (Debian's prometheus package has it):" \
		"sudo apt-get install --no-install-recommends prometheus" >&2; exit 1; }
	promtool check rules workers/monitoring/alerts.yml
	promtool test rules workers/monitoring/alerts.test.yml

test: PROFILE := --tests
test: check $(STAMP) $(CHART) lint typecheck monitoring-check
	$(BIN)/pytest --ds=tests.settings

benchmark: setup
	$(MANAGE) benchmark

fake-exchange: setup
	$(MANAGE) fake_exchange --ws-port 9443 --rest-port 9444 --symbols btcusdt:50,ethusdt:20

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache web/node_modules $(CHART)
