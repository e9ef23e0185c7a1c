"""The bars of the charge contract, a compact table, and ``chaos/results/latest.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .faults import Fault
from .reconcile import BAD_CHARGES, Figures

RESULTS = Path(__file__).resolve().parent / "results"


def bars(fig: Figures) -> dict[str, tuple[int, bool]]:
    """Each bar: (the figure, whether it passes). Any failing bar fails the run."""
    lost = sum(fig.charges[k] for k in BAD_CHARGES)
    found = {
        "charged 503s": fig.charges["charged_503"],
        "lost money (charges for calls not served, µc)": fig.lost_micros,
        "charges for calls not served": lost,
        "undocumented 5xx (not 503 + Retry-After)": fig.counts["undocumented_5xx"],
        "users with more than one trial": fig.trials["more_than_one"],
        "charged users without a trial": fig.trials["served_without_trial"],
        "metered first-served 2xx without a debit": fig.counts["served_unbilled"],
        "verify discrepancies": len(fig.verify.get("discrepancies", [])),
    }
    return {name: (value, value == 0) for name, value in found.items()}


def to_json(fig: Figures, faults: list[Fault], run: dict[str, Any]) -> dict[str, Any]:
    checked = bars(fig)
    return {
        "run": run,
        "faults": [
            {
                "name": f.name,
                "at_s": round(f.t_start - run["load_started"], 1),
                "took_s": round(f.t_end - f.t_start, 1),
                "detail": f.detail,
            }
            for f in faults
        ],
        "counts": fig.counts,
        "attempt_statuses": dict(sorted(fig.statuses.items())),
        "final_statuses": dict(sorted(fig.finals.items())),
        "charges": dict(sorted(fig.charges.items())),
        "lost_micros": fig.lost_micros,
        "by_fault": {k: dict(sorted(v.items())) for k, v in fig.by_fault.items()},
        "trials": fig.trials,
        "verify": {
            "ok": fig.verify.get("ok"),
            "accounts": fig.verify.get("accounts"),
            "entries": fig.verify.get("entries"),
            "discrepancies": fig.verify.get("discrepancies", [])[:20],
        },
        "bars": {name: {"value": v, "ok": ok} for name, (v, ok) in checked.items()},
        "examples": fig.examples,
        "ok": all(ok for _, ok in checked.values()),
    }


def write(result: dict[str, Any], name: str = "latest.json") -> Path:
    """Write ``name`` under chaos/results/ (``ci/latest.json``: CI's own, ignored by git)."""
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path


def table(result: dict[str, Any]) -> str:
    c, s, ch = result["counts"], result["attempt_statuses"], result["charges"]
    rows = [
        ("logical calls / attempts", f"{c['logical_calls']} / {c['attempts']}"),
        ("users (accounts opened)", f"{c['users']} ({result['trials']['accounts']})"),
        ("2xx first-served / replayed", f"{s.get('2xx_first', 0)} / {s.get('2xx_replayed', 0)}"),
        ("402 / 404 / 409 / 422 / 429", " / ".join(str(s.get(k, 0)) for k in _CODES)),
        ("503 (with Retry-After)", str(s.get("503", 0))),
        (
            "lost in flight / not connected",
            f"{s.get('lost_in_flight', 0)} / {s.get('not_connected', 0)}",
        ),
        ("final answers", ", ".join(f"{k} {v}" for k, v in result["final_statuses"].items())),
        (
            "metered first-served 2xx: billed + not",
            f"{c['metered_first_served_2xx']} = {ch.get('served', 0)} + {c['served_unbilled']}",
        ),
        (
            "standing charges: served + lost in flight + not served",
            f"{ch.get('standing', 0)} = {ch.get('served', 0)} + {ch.get('lost_in_flight', 0)}"
            f" + {sum(ch.get(k, 0) for k in BAD_CHARGES)}",
        ),
        ("debit+refund pairs (not charged)", str(ch.get("reversed", 0))),
        ("served charges not under the Credit-Charge-Id", str(c["charge_id_mismatches"])),
        (
            "trials: one / none / more",
            "{one_trial} / {no_trial} / {more_than_one}".format(**result["trials"]),
        ),
        ("open holds", str(result["trials"]["open_holds"])),
        ("verify", "clean" if result["verify"]["ok"] else "NOT CLEAN"),
    ]
    width = max(len(k) for k, _ in rows)
    out = ["faults:"]
    out += [f"  {f['at_s']:>5.1f}s  {f['name']} ({f['detail']})" for f in result["faults"]]
    out += ["figures:"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    out.append("bars:")
    for name, bar in result["bars"].items():
        out.append(f"  {'ok  ' if bar['ok'] else 'FAIL'}  {name}: {bar['value']}")
    if result["by_fault"]:
        out.append("by fault (from 2 s before it to 10 s after):")
        out += [f"  {k}: {v}" for k, v in result["by_fault"].items()]
    out.append("PASS" if result["ok"] else "FAIL: the charge contract does not hold")
    return "\n".join(out)


_CODES = ("402", "404", "409", "422", "429")
