"""Side by side: the same concurrent race against LiteLLM's own budget features and the hook.

``--calls`` calls (default 50) start at once against a budget worth ``--budget-calls`` calls
(default 5) at their worst case (prompt + ``max_tokens``, what the hook holds). The provider is
LiteLLM's ``mock_response`` with ``mock_delay`` seconds of latency (a real call's duration is
the window a check-then-spend budget leaves open). For each contender: how many calls were
served, what LiteLLM says they cost, and that spend against the budget.

Contenders that run here (no network, no LiteLLM database):

- ``litellm.max_budget`` (the SDK's global budget, with ``budget_duration`` in the proxy);
- ``BudgetManager`` (the SDK's per-user budgets, used as its docs show: check, call, update);
- the proxy's ``litellm_settings.max_budget`` + ``budget_duration``;
- ``CreditProxyHook`` in the proxy (one worker, then two), the account holding the budget.

Key, team and end-user budgets (``/key/generate`` with ``max_budget``, teams) need LiteLLM's
own database through Prisma, whose engine is downloaded at first use: they cannot run offline.

    .venv/bin/python -m benchmarks.litellm_budgets [--calls 50] [--budget-calls 5] [--out F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from .litellm_proxy_run import proxy

RESULTS = Path(__file__).resolve().parent / "results" / "litellm_budgets.json"
MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
ANSWER = "Hello there, from a mocked provider call."
MAX_TOKENS = 20  # LiteLLM's mock reports 20 completion tokens, whatever it answers

HOOKS = """
import os
from litellm.proxy._types import UserAPIKeyAuth
from credit_middleware.integrations.litellm_proxy import CreditProxyHook

credits = CreditProxyHook.from_url(os.environ["CM_LEDGER_URL"])

async def auth(request, api_key):
    return UserAPIKeyAuth(api_key=api_key, user_id=api_key.removeprefix("sk-user-"))
"""


def _config(delay: float, settings: str, hooked: bool) -> str:
    auth = "  custom_auth: credit_hooks.auth\n" if hooked else ""
    callbacks = "  callbacks: credit_hooks.credits\n" if hooked else ""
    return (
        "model_list:\n  - model_name: gpt-4o-mini\n"
        f"    litellm_params: {{model: {MODEL}, api_key: sk-not-used,"
        f' mock_response: "{ANSWER}", mock_delay: {delay}}}\n'
        f"litellm_settings:\n  num_retries: 0\n{callbacks}{settings}"
        f"general_settings:\n  master_key: sk-master\n{auth}"
    )


def worst_and_actual() -> tuple[Decimal, Decimal]:
    """(the hold one call takes, what one call costs), in USD, at LiteLLM's prices."""
    import litellm

    prompt = litellm.token_counter(model=MODEL, messages=MESSAGES)
    p, c = litellm.cost_per_token(model=MODEL, prompt_tokens=prompt, completion_tokens=MAX_TOKENS)
    done = litellm.completion(model=MODEL, messages=MESSAGES, mock_response=ANSWER)
    worst = (Decimal(repr(p)) + Decimal(repr(c))).quantize(Decimal("0.000001"), ROUND_CEILING)
    return worst, Decimal(repr(done._hidden_params["response_cost"]))


async def race(n: int, call: Callable[[], Awaitable[float | None]]) -> tuple[int, Decimal, float]:
    """``n`` calls at once: (served, spend in USD as LiteLLM prices it, seconds)."""
    start = time.perf_counter()
    results = await asyncio.gather(*(call() for _ in range(n)), return_exceptions=True)
    served = [r for r in results if isinstance(r, float)]
    return (
        len(served),
        sum((Decimal(repr(r)) for r in served), Decimal(0)),
        time.perf_counter() - start,
    )


async def mocked(delay: float) -> Any:
    """One SDK call to the mocked provider, ``delay`` seconds long."""
    import litellm

    return await litellm.acompletion(
        model=MODEL,
        messages=MESSAGES,
        mock_response=ANSWER,
        mock_delay=delay,
        max_tokens=MAX_TOKENS,
    )


async def sdk_max_budget(n: int, budget: Decimal, delay: float) -> tuple[int, Decimal, float]:
    import litellm

    litellm.max_budget, litellm._current_cost = float(budget), 0

    async def call() -> float | None:
        r = await mocked(delay)
        return float(r._hidden_params["response_cost"])

    try:
        return await race(n, call)
    finally:
        litellm.max_budget, litellm._current_cost = 0.0, 0


async def sdk_budget_manager(n: int, budget: Decimal, delay: float) -> tuple[int, Decimal, float]:
    from litellm import BudgetManager

    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # a local BudgetManager saves its spend to ./user_cost.json
        try:
            manager = BudgetManager(project_name=f"race-{os.getpid()}", client_type="local")
            manager.create_budget(total_budget=float(budget), user="racer")
            return await _budget_manager_race(manager, n, delay)
        finally:
            os.chdir(here)


async def _budget_manager_race(manager: Any, n: int, delay: float) -> tuple[int, Decimal, float]:
    async def call() -> float | None:
        if manager.get_current_cost(user="racer") > manager.get_total_budget("racer"):
            return None  # refused, as its docs check
        r = await mocked(delay)
        manager.update_cost(completion_obj=r, user="racer")
        return float(r._hidden_params["response_cost"])

    return await race(n, call)


async def through_proxy(base: str, key: str, n: int) -> tuple[int, Decimal, float]:
    import openai

    async with openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0) as sdk:

        async def call() -> float | None:
            raw = await sdk.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                max_tokens=MAX_TOKENS,  # type: ignore[arg-type]
            )
            return float(raw.headers["x-litellm-response-cost"])

        return await race(n, call)


async def hooked(
    folder: Path, n: int, budget: Decimal, delay: float, workers: int
) -> dict[str, Any]:
    from credit_middleware import Ledger, Provisioner

    url = f"sqlite:///{folder / 'credits.db'}"
    async with Ledger(url) as ledger:
        await ledger.migrate()
        await Provisioner(ledger).ensure_account("racer", layer="litellm")
        extra = (await ledger.balance("racer")).available - budget
        await ledger.debit("racer", extra)
    with proxy(
        folder, _config(delay, "", True), HOOKS, {"CM_LEDGER_URL": url}, workers=workers
    ) as base:
        served, spend, seconds = await through_proxy(base, "sk-user-racer", n)
        await asyncio.sleep(1.0)  # let the last success events capture
    async with Ledger(url) as ledger:
        billed = [e for e in await ledger.history("racer", limit=1000) if e.kind == "capture"]
        balance = await ledger.balance("racer")
        ok = (await ledger.verify()).ok
    charged = sum((e.amount for e in billed), Decimal(0))
    return {
        "served": served,
        "spend_usd": spend,
        "seconds": seconds,
        "charged": charged,
        "left": balance.available,
        "verify_ok": ok,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--budget-calls", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.5, help="provider latency, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import litellm

    litellm.suppress_debug_info = True
    worst, actual = worst_and_actual()
    budget = worst * args.budget_calls
    n, delay = args.calls, args.delay
    rows: list[dict[str, Any]] = []

    def row(name: str, served: int, spend: Decimal, seconds: float, **extra: Any) -> None:
        rows.append(
            {
                "contender": name,
                "served": served,
                "spend_usd": str(spend),
                "budget_usd": str(budget),
                "spend_over_budget": float(spend / budget),
                "seconds": round(seconds, 2),
                **extra,
            }
        )
        print(
            f"{name:42} served {served:3}/{n}  spend ${spend:.7f}  = {spend / budget:5.2f}x budget"
        )

    row("litellm.max_budget (SDK)", *await sdk_max_budget(n, budget, delay))
    row("BudgetManager (SDK)", *await sdk_budget_manager(n, budget, delay))
    with tempfile.TemporaryDirectory() as tmp:
        settings = f"  max_budget: {budget:.9f}\n  budget_duration: 30d\n"
        with proxy(Path(tmp), _config(delay, settings, False), "", {}) as base:
            row("proxy max_budget + budget_duration", *await through_proxy(base, "sk-master", n))
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            got = await hooked(Path(tmp), n, budget, delay, workers)
            name = f"CreditProxyHook ({workers} worker{'s' if workers > 1 else ''})"
            row(
                name,
                got["served"],
                got["spend_usd"],
                got["seconds"],
                charged=str(got["charged"]),
                left=str(got["left"]),
                verify_ok=got["verify_ok"],
            )
    out = {
        "calls": n,
        "budget_calls": args.budget_calls,
        "delay_s": delay,
        "worst_case_usd": str(worst),
        "actual_usd": str(actual),
        "budget_usd": str(budget),
        "litellm": litellm.__version__ if hasattr(litellm, "__version__") else _version(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"budget ${budget} = {args.budget_calls} calls at their worst case (${worst});"
        f" one call costs ${actual}. Wrote {args.out}"
    )


def _version() -> str:
    from importlib.metadata import version

    return version("litellm")


if __name__ == "__main__":
    asyncio.run(main())
