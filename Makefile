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

# The walkthrough needs only the package with its jwt and prometheus extras, and httpx: it gets
# a throw-away environment of exactly that (removed at the end), not the development one.
DEMO_PACKAGES := '.[jwt,prometheus]' httpx

demo:
	@env=$$(mktemp -d "$${TMPDIR:-/tmp}/credit-demo-env.XXXXXX") && trap 'rm -rf "$$env"' EXIT && \
	  echo "installing the package and what the walkthrough needs into a throw-away environment" && \
	  $(PYTHON) -m venv "$$env" && \
	  "$$env/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt $(DEMO_PACKAGES) && \
	  "$$env/bin/python" -m pip list --format=freeze 2>/dev/null | grep -vc '^\(pip\|setuptools\)==' | \
	    xargs printf "%s packages installed\n\n" && \
	  "$$env/bin/python" examples/demo.py

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
# `make chaos` refreshes the committed chaos/results/latest.json; CI runs `make chaos-ci`, the
# same run writing to chaos/results/ci/ (ignored by git): CI never edits a tracked file.
CHAOS_TIMEOUT ?= 600

.PHONY: chaos chaos-ci
chaos: $(STAMP)
	timeout --kill-after=30 $(CHAOS_TIMEOUT) $(PY) -m chaos

chaos-ci: $(STAMP)
	timeout --kill-after=30 $(CHAOS_TIMEOUT) $(PY) -m chaos --out ci/latest.json

-include benchmarks/bench.mk
