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

# The charge path under seeded fault schedules (tests/_sim.py): `make test` runs 1000 seeds per
# backend; this runs many more (SEEDS=start:stop). A failing seed prints the line replaying it.
SEEDS ?= 0:30000
SIM_TIMEOUT ?= 7200

.PHONY: simulate
simulate: $(STAMP)
	@bash .ci/services
	timeout --kill-after=30 $(SIM_TIMEOUT) $(PY) tests/simulate.py --seeds $(SEEDS)

-include benchmarks/bench.mk
