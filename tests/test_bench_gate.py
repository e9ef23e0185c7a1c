"""``make bench-ci``'s bars (benchmarks/gate.py): a ratio past its bar fails the run and the
report names the bar and by how much; a missing figure is skipped, not failed."""

from __future__ import annotations

from typing import Any

from benchmarks import gate


def _results(hot_vs_floor_p50: float, thr: float, rl_trips: float) -> dict[str, Any]:
    inproc = {"cpu_overhead_us": 100.0, "redis_round_trips_per_request": 1.0,
              "postgres_statements_per_request": 1.0, "tasks_per_request": 1.0}  # fmt: skip
    return {
        "variants": {
            "cm_pg_hot": {"c1_overhead_us": {"p99": 2000.0}, "inproc": inproc},
            "cm_pg_cold": {"c1_overhead_us": {"p99": 4000.0}},
            "cm_pg_ratelimit": {"inproc": {"redis_round_trips_per_request": rl_trips}},
            "floor": {"inproc": {"cpu_overhead_us": 80.0}},
        },
        "ratios": {
            "cm_pg_hot": {"c1_overhead_p50_vs_floor": hot_vs_floor_p50, "throughput_vs_floor": thr},
            "cm_pg_ratelimit": {"c1_overhead_p50_vs_slowapi": 2.0},
        },
    }


def test_a_run_within_every_bar_passes_and_a_missing_figure_is_skipped() -> None:
    out = gate.evaluate(_results(1.5, 0.6, 1.0))
    assert out["passed"]
    skipped = [c["bar"] for c in out["checks"] if c["result"] == "skipped"]
    assert skipped == ["cm_embedded c=1 p99 overhead"]


def test_the_failed_bar_is_named_with_how_far_past_it() -> None:
    out = gate.evaluate(_results(5.0, 0.1, 2.0))
    assert not out["passed"]
    lines = gate.failures(out)
    assert len(lines) == 3
    assert lines[0].startswith("cm_pg_hot / floor, c=1 p50 overhead: bar <= 4x, measured 5.00x")
    assert "FAIL, over by 1.00x (25%)" in lines[0]
    assert "throughput" in lines[1] and "over by 0.05x (33%)" in lines[1]
    assert lines[2].startswith("cm_pg_ratelimit Redis round trips per request: bar <= 1,")
