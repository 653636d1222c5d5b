# The two commands: `make run` sets up and starts the service, `make test` sets up and passes the tests.
# System packages needed (Debian): python3.11 with venv (python3.11-venv), a running PostgreSQL and Redis
# for the tests (.ci/run installs and starts them when missing).

# Prefer Debian's python3.11: it is built with PGO/LTO and parses trades ~1.7x faster than a plain
# source build (pyenv's, on these machines). Any Python 3.11 works.
PYTHON ?= $(shell for p in /usr/bin/python3.11 python3.11 python3; do command -v $$p >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Development defaults; set DEBUG=0 and SECRET_KEY (and the rest, see README) in production.
export DEBUG ?= 1
export PORT ?= 8000
export FLOWER_PORT ?= 5555
export FLOWER_BASIC_AUTH ?= admin:change-me

.PHONY: setup run demo test lint typecheck benchmark fake-exchange clean

$(STAMP): requirements/base.txt requirements/dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0

run: setup
	$(BIN)/honcho start -f Procfile

demo: setup
	$(BIN)/honcho start -f Procfile.demo -e .env.demo

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy streams/binance streams/fake

test: $(STAMP) lint typecheck
	$(BIN)/pytest --ds=tests.settings

benchmark: setup
	$(BIN)/python manage.py benchmark

fake-exchange: setup
	$(BIN)/python manage.py fake_exchange --ws-port 9443 --rest-port 9444 --symbols btcusdt:50,ethusdt:20

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
