"""The benchmark suite: ``make bench`` (full run) and ``make bench-ci`` (short run, in CI).

``python -m benchmarks.run --help`` for the options; the README in this folder says what is
measured and how.
"""
