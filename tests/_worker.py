"""A separate process hammering one account, for the cross-process concurrency tests.

Usage: python tests/_worker.py OP URL ACCOUNT TASKS START_AT [REDIS_URL PREFIX]
OP: ``ensure`` (first requests), ``reconsider`` (the same, from a verified user whose trial was
denied for an unverified e-mail) or ``debit``.
Prints one JSON line with what it saw. Starts all its tasks at START_AT (epoch seconds) so
several processes collide.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from credit_middleware import Identity, InsufficientCredits, Ledger, Provisioner, TrialPolicy


async def main(argv: list[str]) -> dict[str, Any]:
    op, url, account, tasks, start_at = argv[:5]
    ledger = Ledger(url, pool_size=5)
    locks: Any = None
    client: Any = None
    if len(argv) > 5:
        import redis.asyncio as redis

        from credit_middleware import RedisLocks

        client = redis.Redis.from_url(argv[5])
        locks = RedisLocks(client, prefix=argv[6])
    prov = Provisioner(ledger, TrialPolicy(require_verified_email=True), locks=locks)
    await ledger.get_account("warm-up")  # open the pool before the start line
    await asyncio.sleep(max(0.0, float(start_at) - time.time()))
    out: dict[str, Any] = {"ok": 0, "insufficient": 0, "created": 0, "granted": 0}

    async def one() -> None:
        if op in ("ensure", "reconsider"):
            who = Identity(account, email_verified=True)
            r = await prov.ensure_account(who, layer="request")
            out["created"] += r.created
            out["granted"] += r.granted
        else:
            try:
                await ledger.debit(account, "0.01")
                out["ok"] += 1
            except InsufficientCredits:
                out["insufficient"] += 1

    await asyncio.gather(*(one() for _ in range(int(tasks))))
    await ledger.close()
    if client is not None:
        await client.aclose()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))))
