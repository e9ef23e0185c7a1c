# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck services browser clean lock

# constraints.txt pins what the tests last passed with, so a clean clone installs the same set
# (an unpinned install once pulled a LiteLLM release the tests had never seen).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

services:
	@bash .ci/services

# The dashboard test drives a real headless Chromium (Debian's packages; root on these machines).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    chromium chromium-driver fonts-dejavu-core) || \
	  echo "*** could not install chromium: the dashboard browser test will skip (fail under CI)"

lint: $(STAMP)
	$(VENV)/bin/ruff check credit_middleware tests examples benchmarks chaos
	$(VENV)/bin/ruff format --check credit_middleware tests examples benchmarks chaos

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# A hard ceiling, so that a hang (a stray non-daemon thread, a dead peer) fails instead of
# stalling CI; the suite takes about two minutes.
PYTEST_TIMEOUT ?= 1200

test: $(STAMP) services browser lint typecheck
	timeout --kill-after=30 $(PYTEST_TIMEOUT) $(PY) -m pytest -q

# Upgrade every dependency to the newest release the extras allow and re-pin; then `make test`.
lock: $(STAMP)
	$(PY) -m pip install --quiet --upgrade -e '.[all,dev]'
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.tmp
	mv constraints.tmp constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache credits.db credits.db-*

# The fault suite (chaos/): private PostgreSQL and Redis on their own ports, the example app with
# 2 workers under keyed-retry load while Redis, PostgreSQL and a worker are killed and a loop is
# stalled; fails when the ledger and what the clients saw disagree (about two minutes).
CHAOS_TIMEOUT ?= 600

.PHONY: chaos
chaos: $(STAMP)
	timeout --kill-after=30 $(CHAOS_TIMEOUT) $(PY) -m chaos

-include benchmarks/bench.mk

# The conformance suite (and the routing, placement, WebSocket and rate-limit tests) on the
# lowest releases pyproject.toml claims: Starlette, FastAPI, limits and the drivers at their
# lower bounds (.ci/lowest.py), the rest as constraints.txt pins it, in a venv of its own.
LOWEST_VENV := .venv-lowest
LOWEST_TESTS := tests/conformance tests/test_routing.py tests/test_placement.py tests/test_websocket.py \
	tests/test_ratelimit.py tests/test_ratelimit_memory.py

$(LOWEST_VENV)/.installed: pyproject.toml constraints.txt .ci/lowest.py
	rm -rf $(LOWEST_VENV)
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(PYTHON) .ci/lowest.py > $(LOWEST_VENV)/constraints.txt
	$(LOWEST_VENV)/bin/pip install --quiet -c $(LOWEST_VENV)/constraints.txt \
	  -e '.[postgres,redis,jwt,prometheus]' fastapi pytest anyio httpx uvicorn websockets hypothesis \
	  sqlmodel 'pwdlib[argon2]' email-validator 'python-multipart<0.0.13'
	touch $@

.PHONY: test-lowest
test-lowest: $(LOWEST_VENV)/.installed services
	timeout --kill-after=30 600 $(LOWEST_VENV)/bin/python -m pytest -q -p no:cacheprovider $(LOWEST_TESTS)
