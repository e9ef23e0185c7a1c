"""What ``CreditedLLM`` adds to a LiteLLM call, on PostgreSQL, around a mocked provider.

The bare ``litellm.acompletion(..., mock_response=...)`` and the same call through
``CreditedLLM.acompletion`` (ensure account, hold the worst case, call, capture the actual
cost) alternate in one run. Two scenarios: ``existing_user`` (accounts exist: hold + capture)
and ``new_user`` (every call a new user: the failsafe layer provisions first). Writes JSON to
``--out`` (default ``benchmarks/results/litellm.json``) and prints a summary.

    .venv/bin/python -m benchmarks.litellm_overhead [--quick]

``CREDIT_BENCH_DATABASE_URL`` names the server; the benchmark creates a database of its own
and drops it afterwards. No network: LiteLLM's bundled price map is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from .common import DEFAULT_DATABASE_URL
from .harness import create_database, drop_database
from .stats import overhead, summary

RESULTS = Path(__file__).resolve().parent / "results" / "litellm.json"
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello in five words."}]


def _ms(s: dict[str, float]) -> dict[str, float]:
    return {f"{k}_ms": round(v / 1e3, 4) for k, v in s.items() if k != "n"} | {"n": int(s["n"])}


async def scenario(llm: Any, litellm: Any, users: list[str], n: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "mock_response": "Hello there, how are you?",
        "max_tokens": 64,
    }
    bare: list[float] = []
    wrapped: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        await litellm.acompletion(**kwargs)
        t1 = time.perf_counter()
        await llm.acompletion(users[i % len(users)], **dict(kwargs))
        t2 = time.perf_counter()
        bare.append((t1 - t0) * 1e6)
        wrapped.append((t2 - t1) * 1e6)
    b, w = summary(bare), summary(wrapped)
    over = overhead(w, b)
    over["mean"] = statistics.fmean(wrapped) - statistics.fmean(bare)
    return {
        "bare": _ms(b),
        "wrapped": _ms(w),
        "overhead": {f"{k}_ms": round(v / 1e3, 4) for k, v in over.items()},
    }


async def run(n: int, base_url: str) -> dict[str, Any]:
    import litellm

    from credit_middleware import Ledger, Provisioner
    from credit_middleware.integrations.litellm import CreditedLLM

    litellm.suppress_debug_info = True
    name = f"credit_bench_litellm_{os.getpid()}"
    url = await create_database(base_url, name)
    try:
        async with Ledger(url) as ledger:
            await ledger.migrate()
            provisioner = Provisioner(ledger)
            llm = CreditedLLM(provisioner)
            existing = [f"llm-user-{i}" for i in range(32)]
            for user in existing:
                await provisioner.ensure_account(user, layer="admin")
            await scenario(llm, litellm, existing, 20)  # warm up both paths
            hot = await scenario(llm, litellm, existing, n)
            fresh = [f"llm-new-{i}" for i in range(n)]
            cold = await scenario(llm, litellm, fresh, n)
    finally:
        await drop_database(base_url, name)
    return {
        "benchmark": "litellm_overhead",
        "model": MODEL,
        "mocked": True,
        "existing_user": hot,
        "new_user": cold,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 calls per scenario, not 1000")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    logging.getLogger("LiteLLM").setLevel(logging.ERROR)
    base = os.environ.get("CREDIT_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    result = asyncio.run(run(300 if args.quick else 1000, base))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name in ("existing_user", "new_user"):
        o = result[name]["overhead"]
        print(
            f"{name}: overhead p50 {o['p50_ms']:.3f} ms, p99 {o['p99_ms']:.3f} ms"
            f" (bare LiteLLM p50 {result[name]['bare']['p50_ms']:.3f} ms)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
