"""The walkthrough `make demo` runs: the example app on the embedded default (SQLite, no
services), driven over ASGI exactly as HTTP clients would drive it.

A user registers (the eager layer gives the trial at signup), a user who exists only in the
identity provider calls a metered route (the lazy layer provisions on the first request),
spends to the end of the balance (402), runs into the rate limit (429), and the ledger is
printed and verified. The trial here is small (0.01 credits: ten calls at 0.001) so the end
comes quickly; the library's default is 5.0 credits for 30 days.

It needs the base package with its ``jwt`` and ``prometheus`` extras, and httpx: ``make demo``
installs exactly that in a throw-away environment. The ledger lives in a temporary folder that
is removed at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from decimal import Decimal

import httpx
import jwt

from credit_middleware import Ledger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
logging.getLogger("examples.app").setLevel(logging.ERROR)  # the dev-secret warning: known
# the chat route is not part of the walkthrough: without LiteLLM installed it would warn so
logging.getLogger("examples.chat").setLevel(logging.ERROR)
from examples.app import DEV_SECRET, create_app  # noqa: E402

TRIAL = Decimal("0.01")


def show(label: str, response: httpx.Response, *headers: str) -> None:
    extra = "  ".join(f"{h}: {response.headers[h]}" for h in headers if h in response.headers)
    print(f"   {label:<34} {response.status_code}  {extra}")


async def main() -> int:
    folder = tempfile.mkdtemp(prefix="credit-demo-")
    try:
        return await walkthrough(f"sqlite:///{os.path.join(folder, 'credits.db')}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def walkthrough(url: str) -> int:
    app = create_app(
        database_url=url, trial_amount=TRIAL, rate_limit="20/minute", jwt_secret=DEV_SECRET
    )
    print(f"app: examples/app.py, ledger {url} (embedded SQLite + in-memory limits)\n")
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://demo") as client,
    ):
        print("1. signup: the eager layer gives the trial before the first call")
        r = await client.post(
            "/auth/register", json={"email": "ada@example.com", "password": "correct horse"}
        )
        show("POST /auth/register", r)
        ada = r.json()
        auth = {"Authorization": f"Bearer {ada['token']}"}
        r = await client.get("/credits/balance", headers=auth)
        print(f"   GET /credits/balance               {r.status_code}  {r.json()}\n")

        print("2. a user who exists only in the identity provider (nobody registered them)")
        claims = {"sub": "idp|grace", "email": "grace@example.com", "exp": int(time.time()) + 600}
        grace = {"Authorization": f"Bearer {jwt.encode(claims, DEV_SECRET, algorithm='HS256')}"}
        r = await client.get("/v1/echo", params={"msg": "hello"}, headers=grace)
        show("GET /v1/echo (first call ever)", r, "Credit-Balance", "Credit-Cost")
        print("   the lazy layer provisioned her on the spot: no 404, no 500\n")

        print("3. spending to the end of the balance")
        for n in range(2, 12):
            r = await client.get("/v1/echo", params={"msg": n}, headers=grace)
            if r.status_code != 200:
                break
        show(f"GET /v1/echo (call {n})", r)
        print("   " + json.dumps(r.json()) + "\n")

        print("4. the rate limit of the trial tier (20/minute here)")
        for _ in range(30):
            r = await client.get("/credits/balance", headers=auth)
            if r.status_code == 429:
                break
        show("GET /credits/balance", r, "Retry-After")
        print(f"   RateLimit-Policy: {r.headers.get('RateLimit-Policy')}")
        print(f"   RateLimit: {r.headers.get('RateLimit')}\n")

        print("5. a forged token")
        r = await client.get("/v1/echo", headers={"Authorization": "Bearer forged.token.here"})
        show("GET /v1/echo", r)
        print(f"   {r.json()['title']}: nothing was created\n")

    async with Ledger(url) as ledger:
        print("6. the ledger of idp|grace (append-only, newest first)")
        for e in await ledger.history("idp|grace", limit=20):
            print(
                f"   #{e.entry_id:<3} {e.kind:<7} {e.amount:>8}  balance {e.balance_after:<8}"
                f" layer={e.layer or '-'} route={e.route or '-'}"
            )
        report = await ledger.verify()
        print(
            f"\n7. verify: {'ok' if report.ok else 'FAILED'} - {report.accounts} accounts,"
            f" {report.entries} entries, {len(report.discrepancies)} discrepancies"
        )
        for d in report.discrepancies:
            print(f"   invariant {d.invariant}: {d.detail}")
        return 0 if report.ok and report.accounts == 2 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
