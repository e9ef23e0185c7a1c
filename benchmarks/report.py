"""Turn a run into figures: ``latest.json`` (every figure with name and unit), ``latest.md``,
``latency.png`` and the table printed on stdout."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .stats import PERCENTILES, median, percentile, ratio

if TYPE_CHECKING:
    from .run import Bench, Variant

PCTS = [name for name, _ in PERCENTILES]
MIDDLEWARE = ("cm_embedded", "cm_pg_hot", "cm_pg_keyed", "cm_pg_cold", "cm_pg_ratelimit")


def _med(rows: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    got = [r[key] for r in rows if key in r]
    if not got:
        return None
    return {p: median(g[p] for g in got) for p in PCTS}


def _non2xx(rows: list[dict[str, Any]]) -> int:
    bad = 0
    for r in rows:
        for counts in r["status"].values():
            bad += sum(n for code, n in counts.items() if not code.startswith("2"))
    return bad


def assemble(
    bench: Bench,
    machine: dict[str, Any],
    inproc: dict[str, dict[str, float]],
    ext: dict[str, dict[str, Any]],
    started: float,
    variants: Sequence[Variant],
) -> dict[str, Any]:
    p = bench.profile
    out: dict[str, Any] = {
        "schema": 1,
        "mode": bench.mode,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine,
        "config": {
            "rounds": p.rounds,
            "c1_requests": p.c1_requests,
            "throughput_seconds": p.thr_s,
            "open_loop_seconds": p.open_s,
            "connections_under_load": p.conns,
            "open_loop_rates_rps": bench.rates,
            "load_fraction_of_slowest": p.load_fraction,
            "calibration_rps": getattr(bench, "calibration", {}),
            "inproc_iterations": p.inproc_iterations,
        },
        "variants": {},
        "notes": list(bench.notes),
    }
    for v in variants:
        rows = [r[v.name] for r in bench.rounds if v.name in r]
        entry: dict[str, Any] = {"label": v.label, "status": bench.status[v.name]}
        entry["load_rate_rps"] = bench.rates.get("main" if v.name == "bare" else v.group)
        entry["rounds"] = len(rows)
        if rows:
            entry["c1_latency_us"] = _med(rows, "c1")
            entry["load_latency_us"] = _med(rows, "open")
            if v.name != "bare":
                entry["c1_overhead_us"] = _med(rows, "c1_overhead")
                entry["load_overhead_us"] = _med(rows, "open_overhead")
            entry["throughput_rps"] = median(r["thr_rps"] for r in rows)
            lags = [x for r in rows for x in r.get("dispatch_lag_p99_us", {}).values()]
            entry["loadgen_dispatch_lag_p99_us"] = median(lags) if lags else None
            entry["non_2xx_responses"] = _non2xx(rows)
            if entry["non_2xx_responses"]:
                out["notes"].append(
                    f"{v.name}: {entry['non_2xx_responses']} responses were not 2xx: its"
                    " figures are suspect"
                )
        if v.name in inproc:
            entry["inproc"] = inproc[v.name]
        out["variants"][v.name] = entry
    out["ratios"] = ratios(out["variants"])
    out["extras"] = ext
    out["targets"] = targets(out["variants"], out["ratios"], out["extras"])
    out["figures"] = figures(out)
    return out


def _get(variants: dict[str, Any], name: str, key: str, pct: str = "p50") -> float:
    value = variants.get(name, {}).get(key)
    if value is None:
        return math.nan
    return float(value[pct]) if isinstance(value, dict) else float(value)


def ratios(variants: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in MIDDLEWARE:
        if "c1_overhead_us" not in variants.get(name, {}):
            continue
        r: dict[str, float] = {}
        for ref in ("floor", "slowapi"):
            for pct in ("p50", "p99"):
                r[f"c1_overhead_{pct}_vs_{ref}"] = ratio(
                    _get(variants, name, "c1_overhead_us", pct),
                    _get(variants, ref, "c1_overhead_us", pct),
                )
                r[f"load_overhead_{pct}_vs_{ref}"] = ratio(
                    _get(variants, name, "load_overhead_us", pct),
                    _get(variants, ref, "load_overhead_us", pct),
                )
            r[f"throughput_vs_{ref}"] = ratio(
                _get(variants, name, "throughput_rps"), _get(variants, ref, "throughput_rps")
            )
        out[name] = r
    return out


def targets(
    variants: dict[str, Any], rat: dict[str, dict[str, float]], ext: dict[str, Any]
) -> list[dict[str, Any]]:
    hot = "cm_pg_hot"

    def row(name: str, value: float, target: float, unit: str, lower: bool = True) -> dict:
        met = None if math.isnan(value) else (value <= target if lower else value >= target)
        goal = "<=" if lower else ">="
        return {
            "name": name,
            "value": value,
            "goal": goal,
            "target": target,
            "unit": unit,
            "met": met,
        }

    signup_p99 = ext.get("signup", {}).get("p99_overhead_ms")
    signup_p99 = math.nan if signup_p99 is None else signup_p99
    return [
        row("hot path p50 overhead, c=1", _get(variants, hot, "c1_overhead_us") / 1e3, 0.6, "ms"),
        row(
            "hot path p99 overhead, c=1",
            _get(variants, hot, "c1_overhead_us", "p99") / 1e3,
            1.5,
            "ms",
        ),
        row(
            "hot path p50 overhead vs floor",
            rat.get(hot, {}).get("c1_overhead_p50_vs_floor", math.nan),
            1.2,
            "x",
        ),
        row(
            "cold path p99 overhead, c=1",
            _get(variants, "cm_pg_cold", "c1_overhead_us", "p99") / 1e3,
            5.0,
            "ms",
        ),
        row("signup decorator p99 overhead", float(signup_p99), 5.0, "ms"),
        row(
            "hot path throughput vs floor",
            rat.get(hot, {}).get("throughput_vs_floor", math.nan),
            1.0,
            "x",
            lower=False,
        ),
        row(
            "rate-limit-only p50 overhead vs slowapi",
            rat.get("cm_pg_ratelimit", {}).get("c1_overhead_p50_vs_slowapi", math.nan),
            1.0,
            "x",
        ),
    ]


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every figure as ``{"name", "value", "unit"}``."""
    out: list[dict[str, Any]] = []
    units = {
        "c1_latency_us": "us",
        "load_latency_us": "us",
        "c1_overhead_us": "us",
        "load_overhead_us": "us",
    }
    for name, v in results["variants"].items():
        for key, unit in units.items():
            for pct, value in (v.get(key) or {}).items():
                out.append({"name": f"{name}.{key[:-3]}.{pct}", "value": value, "unit": unit})
        if "throughput_rps" in v:
            out.append(
                {"name": f"{name}.throughput", "value": v["throughput_rps"], "unit": "req/s"}
            )
        for key in ("wall_us", "cpu_us", "wall_overhead_us", "cpu_overhead_us"):
            if key in v.get("inproc", {}):
                value = v["inproc"][key]
                out.append({"name": f"{name}.inproc.{key[:-3]}", "value": value, "unit": "us"})
        for key in (
            "postgres_statements_per_request",
            "redis_round_trips_per_request",
            "tasks_per_request",
        ):
            if key in v.get("inproc", {}) and (name != "cm_embedded" or key.startswith("tasks")):
                out.append({"name": f"{name}.{key}", "value": v["inproc"][key], "unit": "count"})
    for name, r in results["ratios"].items():
        for key, value in r.items():
            out.append({"name": f"{name}.ratio.{key}", "value": value, "unit": "x"})
    for name, e in results["extras"].items():
        for key, value in e.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                unit = key.rsplit("_", 1)[-1] if "_" in key else ""
                out.append({"name": f"{name}.{key}", "value": value, "unit": unit})
    return out


# ---------------------------------------------------------------------- text


def _f(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value / scale:.{digits}f}"


def headline_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = [
        "variant",
        "c=1 overhead p50 ms",
        "p95",
        "p99",
        "max",
        "load overhead p50 ms",
        "load p99",
        "throughput req/s",
        "in-process CPU µs",
        "x floor (p50)",
        "x slowapi (p50)",
        "non-2xx",
    ]
    rows = []
    for name, v in results["variants"].items():
        if v["status"] != "ok" and not v.get("c1_latency_us"):
            rows.append([name, v["status"][:70], *[""] * (len(head) - 2)])
            continue
        c1 = v.get("c1_overhead_us") or v.get("c1_latency_us") or {}
        load = v.get("load_overhead_us") or v.get("load_latency_us") or {}
        r = results["ratios"].get(name, {})
        inproc = v.get("inproc", {})
        cpu = inproc.get("cpu_overhead_us", inproc.get("cpu_us"))
        label = name if name != "bare" else "bare (absolute latency)"
        rows.append(
            [
                label,
                _f(c1.get("p50"), 1e3, 3),
                _f(c1.get("p95"), 1e3, 3),
                _f(c1.get("p99"), 1e3, 3),
                _f(c1.get("max"), 1e3, 1),
                _f(load.get("p50"), 1e3, 3),
                _f(load.get("p99"), 1e3, 2),
                _f(v.get("throughput_rps"), 1, 0),
                _f(cpu, 1, 0),
                _f(r.get("c1_overhead_p50_vs_floor")),
                _f(r.get("c1_overhead_p50_vs_slowapi")),
                str(v.get("non_2xx_responses", "")),
            ]
        )
    return head, rows


def table(results: dict[str, Any]) -> str:
    head, rows = headline_rows(results)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    lines.append("")
    for t in results["targets"]:
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(
            f"target {t['name']}: {_f(t['value'])} {t['unit']} ({t['goal']} {t['target']}) {met}"
        )
    from .gate import describe

    gate = results.get("ci_gate", {})
    for check in gate.get("checks", []):
        lines.append(f"CI bar {describe(check)}")
    lines.append(f"CI bars: {'pass' if gate.get('passed', True) else 'FAIL'}")
    return "\n".join(lines)


def readme_table(results: dict[str, Any]) -> str:
    """The compact table for the project README."""
    names = {
        "cm_pg_hot": "CreditMiddleware, PostgreSQL + Redis, existing account",
        "cm_pg_keyed": "the same, every call with an Idempotency-Key of its own",
        "cm_pg_cold": "CreditMiddleware, PostgreSQL + Redis, first request (provisions)",
        "cm_pg_ratelimit": "CreditMiddleware, rate limit only",
        "cm_embedded": "CreditMiddleware, embedded (SQLite + memory)",
        "floor": "hand-written floor (1 Redis INCR + 1 guarded debit)",
        "slowapi": "slowapi (rate limit only, same Redis)",
    }
    rows = []
    for name, label in names.items():
        v = results["variants"].get(name, {})
        c1 = v.get("c1_overhead_us") or {}
        if not c1:
            rows.append([label, "-", "-", "-", v.get("status", "not run")])
            continue
        rows.append(
            [
                label,
                _f(c1.get("p50"), 1e3, 2),
                _f(c1.get("p99"), 1e3, 2),
                _f(v.get("throughput_rps"), 1, 0),
                _f(v.get("inproc", {}).get("cpu_overhead_us"), 1, 0),
            ]
        )
    bare = results["variants"].get("bare", {})
    rows.append(
        [
            "bare Starlette (baseline, absolute)",
            _f((bare.get("c1_latency_us") or {}).get("p50"), 1e3, 2),
            _f((bare.get("c1_latency_us") or {}).get("p99"), 1e3, 2),
            _f(bare.get("throughput_rps"), 1, 0),
            "-",
        ]
    )
    head = ["", "added p50 ms (c=1)", "added p99 ms (c=1)", "req/s (32 conns)", "CPU µs/req"]
    return _md_table(head, rows)


def extras_table(ext: dict[str, dict[str, Any]]) -> str:
    """Overhead over the same call without the library (ms), or the gap, per component."""
    rows = []
    for name, e in ext.items():
        if e.get("status") != "ok":
            rows.append([name, "-", "-", "-", "-", str(e.get("status"))])
            continue
        for scenario in ("existing_user", "new_user"):
            cells = [
                _f(e.get(f"{scenario}_{p}_overhead_ms"), 1, 3) for p in ("p50", "p90", "p95", "p99")
            ]
            rows.append([name, scenario.replace("_", " "), *cells, str(e.get("source"))])
    head = ["component", "scenario", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "source"]
    for row in rows:
        if len(row) == 6:
            row.insert(5, "-")
    return _md_table(head, rows)


def _rates(rates: dict[str, float]) -> str:
    return ", ".join(f"{group}: {rate:.0f} req/s" for group, rate in rates.items())


def _md_table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = list(head)
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def markdown(results: dict[str, Any]) -> str:
    m, c = results["machine"], results["config"]
    run = "full run (`make bench`)" if results["mode"] == "full" else "CI run (`make bench-ci`)"
    lines = [
        "# credit-middleware benchmark",
        "",
        f"{run}, {results['started_at']}, {results['duration_s']} s, commit {m['git_commit']}.",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['platform']}; Python {m['python']}"
        f" ({m['event_loop']} loop, {m['http_parser']} HTTP parser); PostgreSQL"
        f" {m.get('postgresql')} (synchronous_commit={m.get('postgresql_synchronous_commit')});"
        f" Redis {m.get('redis')}. Server, load generator, PostgreSQL and Redis share the machine"
        f" (load average at start {m.get('load_average_at_start')}, at end"
        f" {m.get('load_average_at_end')}).",
        "",
        f"Each variant served by uvicorn (1 worker) in its own process, loaded over loopback"
        " HTTP/1.1 keep-alive from another process (the same machine: loopback only)."
        f" {c['rounds']} rounds, variants interleaved (the order rotates each round); every"
        " figure is the median over rounds. *Overhead* = the variant's latency percentile minus"
        " the bare app's in the same round. **c=1**: one connection, sequential requests"
        f" ({c['c1_requests']} per round, fewer if the time cap is hit). **Under load**:"
        f" {c['connections_under_load']} connections, open loop at a fixed rate, latency measured"
        " from each request's *intended* send time (no coordinated omission); the rate is"
        f" {c['load_fraction_of_slowest']:.0%} of the slowest variant's throughput in its group"
        f" ({_rates(c['open_loop_rates_rps'])}), and the bare app is measured at every group's"
        f" rate. **Throughput**: {c['connections_under_load']} connections, closed loop,"
        f" {c['throughput_seconds']} s. **In-process**: the app called directly"
        f" {c['inproc_iterations']} times with a prepared scope, wall and process CPU time per"
        " request, minus the bare app's.",
        "",
        "## Headline",
        "",
        _md_table(*headline_rows(results)),
        "",
        "## Targets (DESIGN.md)",
        "",
        _md_table(
            ["target", "value", "goal", "result"],
            [
                [
                    t["name"],
                    f"{_f(t['value'])} {t['unit']}",
                    f"{t['goal']} {t['target']} {t['unit']}",
                    {True: "met", False: "**missed**", None: "not measured"}[t["met"]],
                ]
                for t in results["targets"]
            ],
        ),
        "",
        "CI bars (`make bench-ci` fails on any; see benchmarks/gate.py):",
        "",
        _md_table(
            ["bar", "measured", "result"],
            [
                [
                    f"{c['bar']} {c['goal']} {c['limit']:g} {c['unit']}",
                    "-" if c["value"] is None else f"{c['value']:.2f} {c['unit']}",
                    {"pass": "pass", "FAIL": "**FAIL**"}.get(c["result"], c["result"]),
                ]
                for c in results["ci_gate"]["checks"]
            ],
        ),
        "",
        "## Absolute latencies (ms) and throughput",
        "",
        "Generator lag: how late the load generator itself sent open-loop requests (p99); it"
        " is in every variant's latencies alike and cancels out of the overheads.",
        "",
        _md_table(
            [
                *("variant", "c=1 p50", "p95", "p99", "max", "load p50", "p95", "p99", "max"),
                *("req/s", "generator lag p99 ms"),
            ],
            [
                [name]
                + [_f((v.get("c1_latency_us") or {}).get(p), 1e3, 3) for p in PCTS]
                + [_f((v.get("load_latency_us") or {}).get(p), 1e3, 3) for p in PCTS]
                + [_f(v.get("throughput_rps"), 1, 0)]
                + [_f(v.get("loadgen_dispatch_lag_p99_us"), 1e3, 2)]
                for name, v in results["variants"].items()
            ],
        ),
        "",
        "## In-process cost per request (µs), round trips and tasks per request",
        "",
        _md_table(
            [
                "variant",
                "wall",
                "CPU",
                "wall - bare",
                "CPU - bare",
                "PG statements",
                "Redis trips",
                "tasks",
            ],
            [
                [name]
                + [
                    _f(v["inproc"].get(k), 1, 1)
                    for k in ("wall_us", "cpu_us", "wall_overhead_us", "cpu_overhead_us")
                ]
                + [
                    _f(v["inproc"].get(k), 1, 2) if name != "cm_embedded" else "n/a (SQLite)"
                    for k in ("postgres_statements_per_request", "redis_round_trips_per_request")
                ]
                + [_f(v["inproc"].get("tasks_per_request"), 1, 2)]
                for name, v in results["variants"].items()
                if "inproc" in v
            ],
        ),
        "",
        "## Signup decorator and LiteLLM wrapper",
        "",
    ]
    lines.append(extras_table(results["extras"]))
    lines += ["", "## Variants", ""]
    for name, v in results["variants"].items():
        lines.append(f"- `{name}`: {v['label']} — {v['status']}")
    if results["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    m = results["machine"]
    lines += [
        "",
        "## For the README",
        "",
        readme_table(results),
        "",
        f"{m['cores']} cores ({m['cpu_model']}), Python {m['python']}, PostgreSQL"
        f" {str(m.get('postgresql')).split()[0]}, Redis {m.get('redis')}, uvicorn 1 worker;"
        f" medians of {results['config']['rounds']} rounds,"
        f" `make {'bench' if results['mode'] == 'full' else 'bench-ci'}`."
        " Full report: `benchmarks/results/latest.md`.",
        "",
        "![latency distributions](latency.png)",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- chart


def chart(results: dict[str, Any], samples: dict[str, dict[str, list[float]]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        results["notes"].append("matplotlib is not installed: no chart")
        return False
    qs = [100 * (1 - 10 ** (-k / 40)) for k in range(0, 161)]  # 0 .. 99.99 on a "nines" axis
    xs = [-math.log10(1 - q / 100) if q < 100 else 4.0 for q in qs]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=False)
    panels = (("c1", "concurrency 1"), ("open", "under load: 32 connections, open loop"))
    for ax, (phase, title) in zip(axes, panels, strict=True):
        for name in results["variants"]:
            data = sorted(samples.get(name, {}).get(phase, []))
            if not data:
                continue
            ys = [percentile(data, q) / 1e3 for q in qs]
            rate = results["variants"][name].get("load_rate_rps")
            label = f"{name} @ {rate:.0f} req/s" if phase == "open" and rate else name
            ax.plot(xs, ys, label=label, linewidth=1.6)
        ax.set_yscale("log")
        ax.set_xticks([0, 1, 2, 3, 4])
        ax.set_xticklabels(["p0", "p90", "p99", "p99.9", "p99.99"])
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (ms, log)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes:
        ax.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(
        f"credit-middleware: request latency through uvicorn, all rounds pooled"
        f" ({results['mode']} run, {m['cores']} cores, {m['cpu_model']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(
    results: dict[str, Any], samples: dict[str, dict[str, list[float]]], out: Path
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    chart(results, samples, out / "latency.png")
    (out / "latest.md").write_text(markdown(results), encoding="utf-8")
    (out / "latest.json").write_text(
        json.dumps(_finite(results), indent=1, default=str, allow_nan=False) + "\n",
        encoding="utf-8",
    )


def _finite(value: Any) -> Any:
    """NaN (not measured) becomes null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
