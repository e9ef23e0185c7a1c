"""The bars ``make bench-ci`` fails on: the 50 ms ceiling, and ratios measured within one run.

The machines these runs share are noisy (two cores, other jobs): an absolute time says more
about the neighbours than about the code. So, besides the seed's 50 ms ceiling, each bar
compares two variants measured in the same run, interleaved round by round (a busy machine
slows both), or counts round trips (no noise at all). Each bar is set with a margin over the
spread of repeated runs on a busy machine (benchmarks/README.md gives the runs it was set from):
it catches a real regression (an extra round trip, a per-request task, twice the CPU), not a
noisy neighbour. Where the target itself (DESIGN.md, issue 13) is not met yet, the bar guards
today's level instead, and says so in ``why``.

The 50 ms ceiling is an absolute figure, but still an overhead over the bare app measured in
the same round. A busy neighbour can still push one variant's p99 over it (62 ms was seen beside
other work, 13 ms inside CI on the same tree): a ceiling that fails is measured once more
(``run.py``: the bare app and that variant again, c=1, all rounds) and fails the run only if the
second measurement fails too. Both figures are reported; a real regression fails twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["BARS", "Bar", "ceiling_failures", "evaluate", "failures"]

CEILING_MS = 50.0


@dataclass(frozen=True)
class Bar:
    name: str
    unit: str
    limit: float
    #: "<=": the value must not exceed the limit; ">=": it must not fall below it
    goal: str
    value: Callable[[dict[str, Any]], float]
    why: str
    #: the variant of an absolute ceiling, measured once more if it fails (None: no retry)
    retried: str | None = None


def _variant(results: dict[str, Any], name: str) -> dict[str, Any]:
    v: dict[str, Any] = results.get("variants", {}).get(name, {})
    return v


def _p99_ms(name: str) -> Callable[[dict[str, Any]], float]:
    def get(results: dict[str, Any]) -> float:
        retry = results.get("ceiling_retry", {}).get(name)
        if retry is not None:  # measured again because the first figure failed: that one counts
            value = retry.get("p99_overhead_ms")
            return math.nan if value is None else float(value)
        p99 = (_variant(results, name).get("c1_overhead_us") or {}).get("p99")
        return math.nan if p99 is None else float(p99) / 1000

    return get


def _ratio(name: str, key: str) -> Callable[[dict[str, Any]], float]:
    def get(results: dict[str, Any]) -> float:
        value = results.get("ratios", {}).get(name, {}).get(key)
        return math.nan if value is None else float(value)

    return get


def _cpu_ratio(name: str, ref: str) -> Callable[[dict[str, Any]], float]:
    def get(results: dict[str, Any]) -> float:
        a = _variant(results, name).get("inproc", {}).get("cpu_overhead_us")
        b = _variant(results, ref).get("inproc", {}).get("cpu_overhead_us")
        if a is None or b is None or b <= 0:
            return math.nan
        return float(a) / float(b)

    return get


def _count(name: str, key: str) -> Callable[[dict[str, Any]], float]:
    def get(results: dict[str, Any]) -> float:
        value = _variant(results, name).get("inproc", {}).get(key)
        return math.nan if value is None else float(value)

    return get


BARS: tuple[Bar, ...] = (
    *(
        Bar(f"{name} c=1 p99 overhead", "ms", CEILING_MS, "<=", _p99_ms(name),
            "the seed system's promise; measured once more before it fails", name)
        for name in ("cm_embedded", "cm_pg_hot", "cm_pg_cold")
    ),
    Bar("cm_pg_hot / floor, c=1 p50 overhead", "x", 4.0, "<=",
        _ratio("cm_pg_hot", "c1_overhead_p50_vs_floor"),
        "target 1.2x not met; seen 0.9-2.8x in bench-ci on a busy machine (3.9x in issue 13),"
        " 1.8-2.7x in full runs"),
    Bar("cm_pg_hot / floor, throughput (32 conns)", "x", 0.15, ">=",
        _ratio("cm_pg_hot", "throughput_vs_floor"),
        "target 2x not met; seen 0.30-1.08x in bench-ci on a busy machine"),
    Bar("cm_pg_hot / floor, in-process CPU per request", "x", 3.0, "<=",
        _cpu_ratio("cm_pg_hot", "floor"),
        "target 1.2x not met; seen 1.0-1.6x in bench-ci (1.7-2.0x in issue 13)"),
    Bar("cm_pg_ratelimit / slowapi, c=1 p50 overhead", "x", 3.0, "<=",
        _ratio("cm_pg_ratelimit", "c1_overhead_p50_vs_slowapi"),
        "target 1x; seen 1.0-1.3x (3.4x before one round trip), the same strategy on both"
        " since this round; slowapi adds ~0.15-0.5 ms only, so this ratio is the noisiest"),
    Bar("cm_pg_hot Redis round trips per request", "count", 1, "<=",
        _count("cm_pg_hot", "redis_round_trips_per_request"),
        "all of a request's limits in one script call"),
    Bar("cm_pg_hot PostgreSQL statements per request", "count", 1, "<=",
        _count("cm_pg_hot", "postgres_statements_per_request"),
        "one guarded debit"),
    Bar("cm_pg_ratelimit Redis round trips per request", "count", 1, "<=",
        _count("cm_pg_ratelimit", "redis_round_trips_per_request"),
        "all of a request's limits in one script call"),
    Bar("cm_pg_hot tasks created per request", "count", 1.5, "<=",
        _count("cm_pg_hot", "tasks_per_request"),
        "the charge's own task (never cancelled); asyncpg's bounded acquire and release and"
        " redis-py's bounded write each added one (3 before). Not 1: a tier re-read (every"
        " 60 s per account) may fall in the traced pass; one more task a request is 2"),
)  # fmt: skip


def evaluate(results: dict[str, Any], bars: tuple[Bar, ...] = BARS) -> dict[str, Any]:
    """Every bar's value and verdict; ``passed`` unless one FAILs (a bar without figures, e.g.
    a variant that could not run, is "skipped": the tests say why, not this gate)."""
    checks = []
    for bar in bars:
        value = bar.value(results)
        check: dict[str, Any] = {
            "bar": bar.name,
            "value": None if math.isnan(value) else value,
            "unit": bar.unit,
            "goal": bar.goal,
            "limit": bar.limit,
            "why": bar.why,
        }
        if math.isnan(value):
            check["result"] = "skipped"
        else:
            over = value - bar.limit if bar.goal == "<=" else bar.limit - value
            check["result"] = "FAIL" if over > 0 else "pass"
            check["over_by"] = over  # > 0: how far past the bar; <= 0: the margin left
        if bar.retried is not None:
            check["variant"] = bar.retried
            retry = results.get("ceiling_retry", {}).get(bar.retried)
            if retry is not None:
                check["first_value"] = retry.get("first_p99_overhead_ms")
        checks.append(check)
    return {"passed": all(c["result"] != "FAIL" for c in checks), "checks": checks}


def describe(check: dict[str, Any]) -> str:
    """One line: the bar, the value, the limit, and by how much it failed or passed."""
    unit = "" if check["unit"] == "count" else (" ms" if check["unit"] == "ms" else "x")
    head = f"{check['bar']}: bar {check['goal']} {check['limit']:g}{unit}"
    if check["result"] == "skipped":
        return f"{head}: skipped (no figure)"
    over = check["over_by"]
    share = abs(over) / check["limit"] * 100 if check["limit"] else math.inf
    how = (
        f"over by {over:.2f}{unit} ({share:.0f}%)" if over > 0 else f"margin {abs(over):.2f}{unit}"
    )
    again = ""
    if check.get("first_value") is not None:
        again = f" (measured again: the first run's {check['first_value']:.2f}{unit} failed)"
    return f"{head}, measured {check['value']:.2f}{unit}{again}: {check['result']}, {how}"


def failures(gate: dict[str, Any]) -> list[str]:
    return [describe(c) for c in gate["checks"] if c["result"] == "FAIL"]


def ceiling_failures(gate: dict[str, Any]) -> list[str]:
    """The variants whose absolute ceiling failed and was not measured again yet."""
    return [
        c["variant"]
        for c in gate["checks"]
        if c["result"] == "FAIL" and c.get("variant") and c.get("first_value") is None
    ]
