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
