# Benchmarks, included by the main Makefile: `make bench` (full run) and `make bench-ci`
# (the short run CI executes after the tests). `make bench` refreshes the committed report in
# benchmarks/results/; `make bench-ci` writes to benchmarks/results/ci/, which git ignores, so
# that a CI run never edits a tracked file.
BENCH_MPL := $(VENV)/.bench-matplotlib

.PHONY: bench bench-ci

$(BENCH_MPL): $(STAMP)
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install --quiet -c constraints.txt matplotlib \
		|| echo "matplotlib could not be installed: the run will have no chart"
	touch $(BENCH_MPL)

bench: $(STAMP) $(BENCH_MPL)
	@bash .ci/services
	$(PY) -m benchmarks.run --mode full

# about three minutes; the ceiling turns a hang into a failure instead of a stalled CI
BENCH_CI_TIMEOUT ?= 1200

bench-ci: $(STAMP) $(BENCH_MPL)
	@bash .ci/services
	timeout --kill-after=30 $(BENCH_CI_TIMEOUT) $(PY) -m benchmarks.run --mode ci \
		--out benchmarks/results/ci

# `make bench-scale`: every operator action (verify, report, dashboard, account page,
# searches, purge, a debit) on bulk-built ledgers of 10k, 100k, 1M and 10M entries, on
# PostgreSQL and SQLite, with the growth between sizes; refreshes the committed
# benchmarks/results/scale.md and scale.json. Heavy on a shared machine: the 10M ledgers take
# several GB of disk while they are measured (removed as soon as they are) and most of an hour
# on 2 cores; SCALE_SIZES=10000,100000,1000000 leaves 10M out.
# `make bench-scale-ci` (CI): 10k and 100k into benchmarks/results/ci/ (ignored by git),
# failing when an action that should not grow with the ledger grows more than 3x per 10x
# entries, or the purge takes more than 3x one plain DELETE (benchmarks/scale_report.py).
SCALE_SIZES ?= 10000,100000,1000000,10000000
BENCH_SCALE_CI_TIMEOUT ?= 600

.PHONY: bench-scale bench-scale-ci

bench-scale: $(STAMP)
	@bash .ci/services
	$(PY) -m benchmarks.scale --sizes $(SCALE_SIZES)

bench-scale-ci: $(STAMP)
	@bash .ci/services
	timeout --kill-after=30 $(BENCH_SCALE_CI_TIMEOUT) $(PY) -m benchmarks.scale \
		--sizes 10000,100000 --gate --out benchmarks/results/ci
