"""Figures measured by other engineers' benchmarks, folded into the report when present.

- signup decorator: ``benchmarks/signup_overhead.py`` (run here; its JSON result is read);
- LiteLLM wrapper: ``benchmarks/litellm_overhead.py`` (mocked provider), if the wrapper exists.

Missing ones are reported as a clearly labelled gap, never as a zero.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_TIMEOUT = 180


def _run(cmd: list[str], out_file: Path, what: str) -> dict[str, Any]:
    """Run another benchmark that writes JSON to ``out_file``; {"status": "gap: ..."} if not."""
    try:
        proc = subprocess.run(
            cmd, cwd=HERE.parent, capture_output=True, text=True, timeout=_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return {"status": f"gap: {what} took longer than {_TIMEOUT} s"}
    if proc.returncode != 0 or not out_file.is_file():
        tail = (proc.stderr or proc.stdout).strip()[-300:]
        return {"status": f"gap: {what} failed: {tail}"}
    try:
        data = json.loads(out_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        return {"status": f"gap: {what} wrote unreadable JSON: {exc}"}
    return {"status": "ok", "source": what, "raw": data}


def _flatten(out: dict[str, Any]) -> dict[str, Any]:
    """Lift the overhead figures of each scenario to ``<scenario>_<pct>_overhead_ms``."""
    data = out.get("raw") or {}
    for scenario in ("new_user", "existing_user"):
        over = (data.get(scenario) or {}).get("overhead") or {}
        for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms"):
            if isinstance(over.get(key), int | float):
                out[f"{scenario}_{key.replace('_ms', '')}_overhead_ms"] = over[key]
    return out


def signup(quick: bool, workdir: Path) -> dict[str, Any]:
    script = HERE / "signup_overhead.py"
    if not script.is_file():
        return {"status": "gap: benchmarks/signup_overhead.py does not exist (not measured)"}
    out_file = workdir / "signup.json"
    cmd = [sys.executable, str(script), "--out", str(out_file)] + (["--quick"] if quick else [])
    out = _flatten(_run(cmd, out_file, "benchmarks/signup_overhead.py"))
    out["p99_overhead_ms"] = out.get("new_user_p99_overhead_ms")
    return out


def litellm(quick: bool, workdir: Path) -> dict[str, Any]:
    wrapper = HERE.parent / "credit_middleware" / "integrations" / "litellm.py"
    if importlib.util.find_spec("litellm") is None or not wrapper.is_file():
        return {"status": "gap: LiteLLM or the credit wrapper is not installed, not measured"}
    out_file = workdir / "litellm.json"
    cmd = [sys.executable, "-m", "benchmarks.litellm_overhead", "--out", str(out_file)]
    return _flatten(_run(cmd + (["--quick"] if quick else []), out_file, "litellm_overhead"))


def collect(quick: bool, workdir: Path) -> dict[str, dict[str, Any]]:
    return {"signup": signup(quick, workdir), "litellm": litellm(quick, workdir)}
