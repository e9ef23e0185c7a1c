"""How long ``build_report`` takes on a ledger of 1,000,000 entries on PostgreSQL.

Generates the ledger in a schema of its own with a few ``INSERT ... SELECT generate_series``
statements (seconds, not minutes), consistent with the ledger's invariants (``verify`` passes:
balances, grant remainders and postings all add up), times ``build_report`` (median of 3 after
one warm-up) and drops the schema. Not a test: run it by hand or from the benchmark job::

    python -m benchmarks.report_1m [--accounts 100000] [--dsn postgresql://...] [--verify]

Each account gets 10 entries over 30 days: its trial grant, 8 debits, and one of a purchase
grant (1 in 20), an expiry of the unspent trial (1 in 10), a last debit that spends the trial to
zero (1 in 10), or one more debit. Provisioning layers and cohorts are spread over the accounts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time

from credit_middleware import Ledger
from credit_middleware.report import build_report

DSN = os.environ.get("CREDIT_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = 1_800_000_000 * 1_000_000  # µs
SPAN = 30 * 86_400 * 1_000_000
TRIAL = 4_500_000
PURCHASE = 10_000_000

# Per account i (1..N): d = the debit size, cls = what its 10th entry is.
_ACCOUNT_CLASS = """
CREATE TEMP TABLE bench_acct AS
SELECT i,
       CASE WHEN i % 10 = 0 THEN 500000 ELSE 1000 * (1 + i % 400) END AS d,
       CASE WHEN i % 20 = 1 THEN 'purchase' WHEN i % 10 = 5 THEN 'expire'
            WHEN i % 10 = 0 THEN 'exhaust' ELSE 'debit' END AS cls,
       {t0} + (i::bigint * {span} / $1) AS created,
       CASE WHEN i % 10 < 7 THEN 'signup' WHEN i % 10 = 7 THEN 'webhook'
            WHEN i % 10 = 8 THEN 'request' ELSE 'litellm' END AS layer,
       'c' || (i % 3)::text AS cohort
FROM generate_series(1, $1) AS i
"""
_ACCOUNTS = f"""
INSERT INTO credit_accounts (account_id, tier, balance, held, sweep_at, cohort, metadata,
                             created_at, updated_at)
SELECT 'user-' || i, 'trial',
       CASE cls WHEN 'purchase' THEN {TRIAL} - 8 * d + {PURCHASE}
                WHEN 'debit' THEN {TRIAL} - 9 * d ELSE 0 END,
       0, NULL, cohort, '{{"provisioned_by":"' || layer || '"}}', created, created
FROM bench_acct
"""
_GRANTS = f"""
INSERT INTO credit_grants (grant_id, account_id, source, amount, remaining, priority,
                           effective_at, expires_at, idempotency_key, layer, created_at)
SELECT i, 'user-' || i, 'trial', {TRIAL},
       CASE cls WHEN 'purchase' THEN {TRIAL} - 8 * d WHEN 'debit' THEN {TRIAL} - 9 * d ELSE 0 END,
       0, created,
       created + CASE cls WHEN 'expire' THEN 20 ELSE 60 END * 86400000000::bigint,
       'trial', layer, created
FROM bench_acct
UNION ALL
SELECT $1 + i, 'user-' || i, 'purchase', {PURCHASE}, {PURCHASE}, 0, created + 600000000,
       NULL, 'buy-' || i, NULL, created + 600000000
FROM bench_acct WHERE cls = 'purchase'
"""
# Entry j (1..10) of account i has id i*10 + j, so entry order is account order.
_ENTRIES = f"""
INSERT INTO credit_entries (entry_id, account_id, kind, amount, delta, held_delta,
                            balance_after, held_after, grant_id, idempotency_key, layer,
                            created_at)
SELECT e.i * 10 + e.j, 'user-' || e.i, e.kind, e.amount,
       CASE WHEN e.kind = 'grant' THEN e.amount ELSE -e.amount END, 0,
       e.after, 0, e.grant_id, e.key, e.layer, e.at
FROM (
    SELECT a.i, j.j,
           CASE WHEN j.j = 1 THEN 'grant' WHEN j.j < 10 THEN 'debit'
                WHEN a.cls = 'purchase' THEN 'grant' WHEN a.cls = 'expire' THEN 'expire'
                ELSE 'debit' END AS kind,
           CASE WHEN j.j = 1 THEN {TRIAL} WHEN j.j < 10 THEN a.d
                WHEN a.cls = 'purchase' THEN {PURCHASE}
                WHEN a.cls IN ('expire', 'exhaust') THEN {TRIAL} - 8 * a.d
                ELSE a.d END AS amount,
           CASE WHEN j.j < 10 THEN {TRIAL} - (j.j - 1) * a.d
                WHEN a.cls = 'purchase' THEN {TRIAL} - 8 * a.d + {PURCHASE}
                WHEN a.cls = 'debit' THEN {TRIAL} - 9 * a.d ELSE 0 END AS after,
           CASE WHEN j.j = 1 OR (j.j = 10 AND a.cls = 'expire') THEN a.i
                WHEN j.j = 10 AND a.cls = 'purchase' THEN $1 + a.i END AS grant_id,
           CASE WHEN j.j = 1 THEN 'trial' WHEN j.j = 10 AND a.cls = 'purchase'
                THEN 'buy-' || a.i END AS key,
           CASE WHEN j.j = 1 THEN a.layer WHEN j.j < 10 THEN 'request' END AS layer,
           CASE WHEN j.j = 10 AND a.cls = 'expire' THEN a.created + 21 * 86400000000::bigint
                ELSE a.created + j.j * 60000000::bigint END AS at
    FROM bench_acct a CROSS JOIN generate_series(1, 10) AS j(j)
) e
"""
# Every entry that moves money posts against the grant it touched.
# (Debits carry no grant id; theirs is the trial's, whose id is the account's number i.)
_POSTINGS = """
INSERT INTO credit_postings (entry_id, grant_id, amount)
SELECT entry_id, COALESCE(grant_id, (entry_id - 1) / 10), delta
FROM credit_entries WHERE delta <> 0
"""
_SEQUENCES = """
SELECT setval(pg_get_serial_sequence('credit_grants', 'grant_id'), (SELECT MAX(grant_id) FROM credit_grants));
SELECT setval(pg_get_serial_sequence('credit_entries', 'entry_id'), (SELECT MAX(entry_id) FROM credit_entries));
"""  # noqa: E501


async def generate(conn: object, accounts: int) -> int:
    import asyncpg

    assert isinstance(conn, asyncpg.Connection)
    await conn.execute("SET synchronous_commit = off")
    # The rows are consistent by construction (--verify checks it): skip the per-row foreign
    # key triggers while loading when allowed to (superuser), which makes it ~2x faster.
    fast = bool(await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
    if fast:
        await conn.execute("SET session_replication_role = replica")
    await conn.execute(_ACCOUNT_CLASS.format(t0=T0, span=SPAN), accounts)
    async with conn.transaction():
        await conn.execute(_ACCOUNTS)
        await conn.execute(_GRANTS, accounts)
        await conn.execute(_ENTRIES, accounts)
        await conn.execute(_POSTINGS)
        await conn.execute(_SEQUENCES)
    if fast:
        await conn.execute("SET session_replication_role = DEFAULT")
    await conn.execute("DROP TABLE bench_acct")
    await conn.execute("ANALYZE")
    return int(await conn.fetchval("SELECT COUNT(*) FROM credit_entries"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=100_000, help="10 entries each")
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--verify", action="store_true", help="also run the ledger's verify")
    args = parser.parse_args()

    import asyncpg

    schema = f"bench_report_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in args.dsn else "?"
    url = f"{args.dsn}{sep}search_path={schema}"
    ledger = Ledger(url, clock=lambda: (T0 + SPAN) / 1e6 + 86_400)
    try:
        await ledger.migrate()
        conn = await asyncpg.connect(url)
        try:
            started = time.perf_counter()
            entries = await generate(conn, args.accounts)
            print(f"generated {entries:,} entries in {time.perf_counter() - started:.1f} s")
        finally:
            await conn.close()
        if args.verify:
            started = time.perf_counter()
            report = await ledger.verify()
            print(f"verify: ok={report.ok} in {time.perf_counter() - started:.2f} s")
            for d in report.discrepancies[:5]:
                print("  ", d)
        await build_report(ledger)  # warm-up: pool, plans, caches
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            result = await build_report(ledger)
            times.append(time.perf_counter() - started)
        data = result.to_json()
        print(
            f"build_report on {entries:,} entries: median {statistics.median(times):.3f} s"
            f" (runs: {', '.join(f'{t:.3f}' for t in times)})"
        )
        print(
            f"  accounts {data['accounts']:,}, active {data['active_accounts']:,},"
            f" consumed {data['credits']['consumed']}, expired {data['credits']['expired']},"
            f" cohorts {len(data['cohorts'])}"
        )
    finally:
        await ledger.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
