"""Percentiles, overheads against the bare app, and medians over rounds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("max", 100.0),
)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    if q >= 100.0:
        return float(sorted_values[-1])
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def summary(values: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99/max and mean of latencies (µs in, µs out)."""
    data = sorted(values)
    out = {name: percentile(data, q) for name, q in PERCENTILES}
    out["mean"] = statistics.fmean(data) if data else math.nan
    out["n"] = float(len(data))
    return out


def overhead(variant: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """The added latency at each percentile: the variant's quantile minus the bare app's, in the
    same round (a difference of quantiles, the usual way to compare two latency distributions)."""
    return {name: variant[name] - base[name] for name, _ in PERCENTILES}


def median(values: Iterable[float]) -> float:
    data = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(data) if data else math.nan


def ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return math.nan
    return a / b
