"""Bulk-built ledgers for ``make bench-scale``: N entries in a few set-based statements.

The rows go straight into the project's own schema (migrated first, so every index, trigger
and rollup table is the real one) with ``INSERT ... SELECT`` over a generated series
(``generate_series`` on PostgreSQL, a recursive CTE on SQLite): seconds per million entries,
not the hours of one debit at a time. The ledger is consistent by construction: ``verify``
passes (balances, running balances, grant remainders and postings all add up).

The shape of issue 21's table: N entries over N/10 accounts. Half of the entries belong to one
account (``whale-0``, whose page the benchmark opens); every other account has five: its trial
grant, three debits and a fifth entry that is a purchase (1 in 20), the expiry of the rest of
its trial (1 in 10), a last debit that spends the trial to zero (1 in 10) or one more debit.
One account in fifty more was refused a trial (no entries). Accounts carry an e-mail on one of
100 domains, a provisioning layer and a cohort; debits a route (4 of them) and a key. Time
spans 30 days whatever N is, so the days of a report stay the same as the ledger grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DAY_US", "SPAN_US", "T0_US", "Shape", "build_statements", "requests_statements"]

T0_US = 1_800_000_000 * 1_000_000
DAY_US = 86_400 * 1_000_000
SPAN_US = 30 * DAY_US
TRIAL = 5_000_000
PURCHASE = 10_000_000
ROUTES = ("/v1/chat", "/v1/embeddings", "/v1/images", "/v1/audio")
WHALE = "whale-0"


@dataclass(frozen=True)
class Shape:
    """How many of what a ledger of ``entries`` entries holds."""

    entries: int

    @property
    def regular(self) -> int:
        """Accounts with five entries each (the whale holds the other half)."""
        return max(1, self.entries // 10)

    @property
    def whale(self) -> int:
        return max(2, self.entries - 5 * self.regular)

    @property
    def denied(self) -> int:
        return self.regular // 50

    @property
    def accounts(self) -> int:
        return self.regular + 1 + self.denied

    @property
    def total_entries(self) -> int:
        return 5 * self.regular + self.whale


def _series(dialect: str, n: int) -> str:
    if dialect == "postgresql":
        return f"SELECT i FROM generate_series(1::bigint, {n}) AS s(i)"
    return (
        f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})"
        " SELECT i FROM s"
    )


def _route(expr: str) -> str:
    cases = " ".join(f"WHEN {k} THEN '{r}'" for k, r in enumerate(ROUTES))
    return f"CASE ({expr}) % {len(ROUTES)} {cases} END"


def build_statements(dialect: str, shape: Shape) -> list[str]:
    """The statements that fill a freshly migrated, empty ledger (run them in order)."""
    n, w = shape.regular, shape.whale
    step = SPAN_US // n
    wstep = SPAN_US // w
    whale_grant = 2 * n + 1
    whale_amount = w * 1000 + 1_000_000
    meta = (
        '\'{"provisioned_by":"\' || layer || \'","email":"user-\' || i || \'@d\' || (i % 100)'
        ' || \'.example","email_domain":"d\' || (i % 100) || \'.example"}\''
    )
    acct = f"""
CREATE TEMP TABLE bench_acct AS
SELECT i, 1000 * (1 + i % 400) AS d,
       CASE WHEN i % 20 = 1 THEN 'purchase' WHEN i % 10 = 5 THEN 'expire'
            WHEN i % 10 = 0 THEN 'exhaust' ELSE 'debit' END AS cls,
       {T0_US} + i * {step} AS created,
       CASE WHEN i % 10 < 7 THEN 'signup' WHEN i % 10 = 7 THEN 'webhook'
            WHEN i % 10 = 8 THEN 'request' ELSE 'litellm' END AS layer,
       'c' || (i % 3) AS cohort
FROM ({_series(dialect, n)}) AS s
"""
    accounts = f"""
INSERT INTO credit_accounts (account_id, tier, balance, held, sweep_at, cohort, metadata,
                             created_at, updated_at)
SELECT 'user-' || i, 'trial',
       CASE cls WHEN 'purchase' THEN {TRIAL} - 3 * d + {PURCHASE}
                WHEN 'debit' THEN {TRIAL} - 4 * d ELSE 0 END,
       0, CASE WHEN cls IN ('purchase', 'debit') THEN created + 60 * {DAY_US} END,
       cohort, {meta}, created, created
FROM bench_acct
UNION ALL
SELECT 'denied-' || i, 'trial', 0, 0, NULL, cohort,
       '{{"provisioned_by":"request","trial_denied":"ip-cap","email":"denied-' || i
       || '@d' || (i % 100) || '.example"}}', created + 1, created + 1
FROM bench_acct WHERE i % 50 = 7
UNION ALL
SELECT '{WHALE}', 'pro', {whale_amount} - {(w - 1) * 1000}, 0, NULL, 'c0',
       '{{"provisioned_by":"signup","email":"whale@big.example","email_domain":"big.example"}}',
       {T0_US}, {T0_US}
"""
    grants = f"""
INSERT INTO credit_grants (grant_id, account_id, source, amount, remaining, priority,
                           effective_at, expires_at, idempotency_key, layer, created_at)
SELECT i, 'user-' || i, 'trial', {TRIAL},
       CASE cls WHEN 'purchase' THEN {TRIAL} - 3 * d WHEN 'debit' THEN {TRIAL} - 4 * d
                ELSE 0 END,
       0, created, created + CASE cls WHEN 'expire' THEN 1 ELSE 60 END * {DAY_US},
       'trial', layer, created
FROM bench_acct
UNION ALL
SELECT {n} + i, 'user-' || i, 'purchase', {PURCHASE}, {PURCHASE}, 0, created + 300000000,
       NULL, 'buy-' || i, NULL, created + 300000000
FROM bench_acct WHERE cls = 'purchase'
UNION ALL
SELECT {whale_grant}, '{WHALE}', 'purchase', {whale_amount}, {whale_amount} - {(w - 1) * 1000},
       0, {T0_US}, NULL, 'buy-whale', NULL, {T0_US}
"""
    # Entry j (1..5) of account i has id (i - 1) * 5 + j; the whale's follow.
    kind = (
        "CASE WHEN j.i = 1 THEN 'grant' WHEN j.i < 5 THEN 'debit'"
        " WHEN a.cls = 'purchase' THEN 'grant' WHEN a.cls = 'expire' THEN 'expire'"
        " ELSE 'debit' END"
    )
    amount = (
        f"CASE WHEN j.i = 1 THEN {TRIAL} WHEN j.i < 5 THEN a.d"
        f" WHEN a.cls = 'purchase' THEN {PURCHASE}"
        f" WHEN a.cls IN ('expire', 'exhaust') THEN {TRIAL} - 3 * a.d ELSE a.d END"
    )
    after = (
        f"CASE WHEN j.i < 5 THEN {TRIAL} - (j.i - 1) * a.d"
        f" WHEN a.cls = 'purchase' THEN {TRIAL} - 3 * a.d + {PURCHASE}"
        f" WHEN a.cls = 'debit' THEN {TRIAL} - 4 * a.d ELSE 0 END"
    )
    entries = f"""
INSERT INTO credit_entries (entry_id, account_id, kind, amount, delta, held_delta,
                            balance_after, held_after, grant_id, idempotency_key, layer, route,
                            created_at)
SELECT (a.i - 1) * 5 + j.i, 'user-' || a.i, {kind}, {amount},
       CASE WHEN ({kind}) = 'grant' THEN {amount} ELSE -({amount}) END, 0, {after}, 0,
       CASE WHEN j.i = 1 OR (j.i = 5 AND a.cls = 'expire') THEN a.i
            WHEN j.i = 5 AND a.cls = 'purchase' THEN {n} + a.i END,
       CASE WHEN j.i = 1 THEN 'trial' WHEN ({kind}) = 'debit' THEN 'c' || ((a.i - 1) * 5 + j.i)
            WHEN a.cls = 'purchase' THEN 'buy-' || a.i END,
       CASE WHEN j.i = 1 THEN a.layer WHEN ({kind}) = 'debit' THEN 'request' END,
       CASE WHEN ({kind}) = 'debit' THEN {_route("a.i + j.i")} END,
       CASE WHEN j.i = 5 AND a.cls = 'expire' THEN a.created + {DAY_US}
            WHEN j.i = 5 AND a.cls = 'purchase' THEN a.created + 300000000
            ELSE a.created + j.i * 60000000 END
FROM bench_acct a CROSS JOIN ({_series(dialect, 5)}) AS j
UNION ALL
SELECT {5 * n} + e.i, '{WHALE}', CASE WHEN e.i = 1 THEN 'grant' ELSE 'debit' END,
       CASE WHEN e.i = 1 THEN {whale_amount} ELSE 1000 END,
       CASE WHEN e.i = 1 THEN {whale_amount} ELSE -1000 END, 0,
       {whale_amount} - (e.i - 1) * 1000, 0,
       CASE WHEN e.i = 1 THEN {whale_grant} END,
       CASE WHEN e.i = 1 THEN 'buy-whale' ELSE 'w' || e.i END,
       CASE WHEN e.i = 1 THEN NULL ELSE 'request' END,
       CASE WHEN e.i = 1 THEN NULL ELSE {_route("e.i")} END,
       {T0_US} + e.i * {wstep}
FROM ({_series(dialect, w)}) AS e
"""
    # Every entry that moves money posts against the grant it touched: its own grant, else the
    # account's trial (id i), else the whale's grant.
    postings = f"""
INSERT INTO credit_postings (entry_id, grant_id, amount)
SELECT entry_id,
       COALESCE(grant_id, CASE WHEN entry_id > {5 * n} THEN {whale_grant}
                               ELSE (entry_id - 1) / 5 + 1 END),
       delta
FROM credit_entries WHERE delta <> 0
"""
    out = [acct, accounts, grants, entries, postings, "DROP TABLE bench_acct"]
    if dialect == "postgresql":
        out.append(
            "SELECT setval(pg_get_serial_sequence('credit_grants', 'grant_id'),"
            " (SELECT MAX(grant_id) FROM credit_grants))"
        )
        out.append(
            "SELECT setval(pg_get_serial_sequence('credit_entries', 'entry_id'),"
            " (SELECT MAX(entry_id) FROM credit_entries))"
        )
    return out


def requests_statements(dialect: str, expired: int, live: int, now_us: int) -> list[str]:
    """Idempotent-request rows as the middleware stores them (a served JSON response of about
    a hundred bytes): ``expired`` of them past their expiry at ``now_us``, ``live`` not."""
    body = '\'{"id":"\' || i || \'","object":"chat.completion","usage":{"total":42}}\''
    pg = dialect == "postgresql"
    body = f"convert_to({body}, 'UTF8')" if pg else f"CAST({body} AS BLOB)"
    headers = '\'[["content-type","application/json"],["content-length","64"]]\''
    return [
        f"""
INSERT INTO credit_requests (account_id, request_key, fingerprint, state, owner, lease_until,
                             charge_key, status, headers, body, body_size, created_at,
                             expires_at)
SELECT 'user-' || (1 + i % 1000), 'req-' || i,
       'sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08',
       'done', 'ch-' || i, {now_us}, 'ch-' || i, 200, {headers}, {body}, 64,
       {now_us} - 86400000000,
       CASE WHEN i <= {expired} THEN {now_us} - 1 - i ELSE {now_us} + 86400000000 END
FROM ({_series(dialect, expired + live)}) AS s
"""
    ]


def describe(shape: Shape) -> dict[str, Any]:
    return {
        "entries": shape.total_entries,
        "accounts": shape.accounts,
        "whale_entries": shape.whale,
    }


async def fill_postgres(url: str, statements: list[str]) -> None:
    """Run the statements on a migrated PostgreSQL ledger (``url`` names its schema) in one
    transaction, without the per-row foreign key triggers when allowed to (superuser)."""
    import asyncpg

    conn = await asyncpg.connect(url, command_timeout=None)
    try:
        await conn.execute("SET synchronous_commit = off")
        fast = bool(
            await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        )
        if fast:
            await conn.execute("SET session_replication_role = replica")
        async with conn.transaction():
            for sql in statements:
                await conn.execute(sql)
        if fast:
            await conn.execute("SET session_replication_role = DEFAULT")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def fill_sqlite(path: str, statements: list[str]) -> None:
    """Run the statements on a migrated SQLite ledger file in one transaction."""
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        for sql in statements:
            conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()
