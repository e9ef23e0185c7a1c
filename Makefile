# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck services browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
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
	$(VENV)/bin/ruff check credit_middleware tests examples benchmarks
	$(VENV)/bin/ruff format --check credit_middleware tests examples benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) services browser lint typecheck
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache credits.db credits.db-*

-include benchmarks/bench.mk
