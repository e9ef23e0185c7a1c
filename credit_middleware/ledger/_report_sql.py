"""The usage report's figures counted from the ledger's own rows: the full recomputation.

It reads every account, grant and entry of the period, so it costs O(entries): the rollups
(``_report_rollups``) answer the same questions from a few rows per day, and this serves a
period that does not start and end at midnight UTC, and the tests that hold the rollups to it.
The same text runs on both backends; sums are exact on both (``_sums``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._executor import Conn
from ._facts import DAY_US, NO_COHORT
from ._sums import LOW_BITS, exact_sum, join, total

__all__ = ["ReportRows", "day_of", "rows_from_entries"]

_MASK = (1 << LOW_BITS) - 1
_META = {
    "postgresql": "(a.metadata::jsonb ->> '{key}')",
    "sqlite": "json_extract(a.metadata, '$.{key}')",
}
_DECIDED = "(t.grant_id IS NOT NULL OR {denied} IS NOT NULL)"


def day_of(col: str) -> str:
    """The UTC day of a µs timestamp column, rounded down (before 1970 too)."""
    return f"(({col}) - CASE WHEN ({col}) < 0 THEN {DAY_US - 1} ELSE 0 END) / {DAY_US}"


@dataclass(slots=True)
class ReportRows:
    """What a report is made of, however it was counted (plain dicts of exact ints):
    ``accounts`` (layer, day, n, trials, denied) of the accounts created in the period;
    ``entries`` (kind, day, s, out_s); ``granted`` (source, s, n); ``usage`` (part: top /
    active / cohort, name, value); ``cohorts`` (cohort, accounts, trials, exhausted,
    purchased)."""

    accounts: list[dict[str, Any]] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    granted: list[dict[str, Any]] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)
    cohorts: list[dict[str, Any]] = field(default_factory=list)


# One pass over the accounts created in the period, with their trial grant if any.
_ACCOUNTS = f"""
SELECT COALESCE({{by}}, t.layer, 'unknown') AS layer, {day_of("a.created_at")} AS day,
       COUNT(*) AS n, COUNT(t.grant_id) AS trials,
       SUM(CASE WHEN t.grant_id IS NULL AND {{denied}} IS NOT NULL THEN 1 ELSE 0 END) AS denied
FROM credit_accounts a
LEFT JOIN credit_grants t ON t.account_id = a.account_id AND t.source = 'trial'
WHERE a.created_at >= $1 AND a.created_at < $2
GROUP BY 1, 2
"""
_ENTRIES = f"""
SELECT kind, {day_of("created_at")} AS day, {exact_sum("amount", "s")},
       {exact_sum("CASE WHEN delta < 0 THEN amount ELSE 0 END", "out")}
FROM credit_entries WHERE created_at >= $1 AND created_at < $2
GROUP BY kind, {day_of("created_at")}
"""
_GRANTED = f"""
SELECT source, {exact_sum("amount", "s")}, COUNT(*) AS n FROM credit_grants
WHERE created_at >= $1 AND created_at < $2 GROUP BY source
"""
# Per-account usage in the period, aggregated once and read three ways: the top consumers,
# how many were active, and what each cohort used. A total is kept as (high, low) parts, the
# low part below 2**32, so that ordering by the pair orders by the total.
_USAGE = f"""
WITH u AS (
    SELECT account_id, CAST(SUM(amount >> {LOW_BITS}) AS BIGINT) AS s_hi,
           CAST(SUM(amount & {_MASK}) AS BIGINT) AS s_lo
    FROM credit_entries
    WHERE kind IN ('debit', 'capture') AND created_at >= $1 AND created_at < $2
    GROUP BY account_id
), v AS (
    SELECT account_id, s_hi + (s_lo >> {LOW_BITS}) AS hi, s_lo & {_MASK} AS lo FROM u
)
SELECT 'top' AS part, account_id AS name, hi AS value_hi, lo AS value_lo
FROM (SELECT account_id, hi, lo FROM v ORDER BY hi DESC, lo DESC, account_id LIMIT $3) t
UNION ALL
SELECT 'active', NULL, 0, COUNT(*) FROM v
UNION ALL
SELECT 'cohort', COALESCE(a.cohort, '{NO_COHORT}'), SUM(v.hi), SUM(v.lo)
FROM v JOIN credit_accounts a ON a.account_id = v.account_id
LEFT JOIN credit_grants t ON t.account_id = a.account_id AND t.source = 'trial'
WHERE a.created_at >= $1 AND a.created_at < $2 AND {{decided}}
GROUP BY COALESCE(a.cohort, '{NO_COHORT}')
"""
# Per trial cohort, over the accounts created in the period. "Exhausted" = the trial grant was
# spent to zero (not expired to zero); "purchased" = the account has a ``purchase`` grant.
_COHORTS = f"""
SELECT COALESCE(a.cohort, '{NO_COHORT}') AS cohort, COUNT(*) AS accounts,
       COUNT(t.grant_id) AS trials,
       SUM(CASE WHEN t.remaining = 0 AND x.grant_id IS NULL THEN 1 ELSE 0 END) AS exhausted,
       SUM(CASE WHEN p.account_id IS NOT NULL THEN 1 ELSE 0 END) AS purchased
FROM credit_accounts a
LEFT JOIN credit_grants t ON t.account_id = a.account_id AND t.source = 'trial'
LEFT JOIN (SELECT DISTINCT grant_id FROM credit_entries WHERE kind = 'expire') x
    ON x.grant_id = t.grant_id
LEFT JOIN (SELECT DISTINCT account_id FROM credit_grants WHERE source = 'purchase') p
    ON p.account_id = a.account_id
WHERE a.created_at >= $1 AND a.created_at < $2 AND {{decided}}
GROUP BY COALESCE(a.cohort, '{NO_COHORT}') ORDER BY 1
"""


def _plain(rows: list[Any]) -> list[dict[str, Any]]:
    return [dict(r.items()) for r in rows]


async def rows_from_entries(conn: Conn, lo: int, hi: int, top: int) -> ReportRows:
    """The report's rows for [lo, hi) (µs), counted from every row of the period; run it in
    one snapshot (the caller's transaction)."""
    meta = _META[conn.dialect]
    by, denied = meta.format(key="provisioned_by"), meta.format(key="trial_denied")
    decided = _DECIDED.format(denied=denied)
    accounts = await conn.fetch(_ACCOUNTS.format(by=by, denied=denied), lo, hi)
    entries = await conn.fetch(_ENTRIES, lo, hi)
    granted = await conn.fetch(_GRANTED, lo, hi)
    usage = await conn.fetch(_USAGE.format(decided=decided), lo, hi, top)
    cohorts = await conn.fetch(_COHORTS.format(decided=decided), lo, hi)
    return ReportRows(
        accounts=[{**r, "denied": int(r["denied"] or 0)} for r in _plain(accounts)],
        entries=[
            {"kind": r["kind"], "day": int(r["day"]), "s": total(r, "s"), "out_s": total(r, "out")}
            for r in entries
        ],
        granted=[{"source": r["source"], "s": total(r, "s"), "n": int(r["n"])} for r in granted],
        usage=[
            {"part": r["part"], "name": r["name"], "value": join(r["value_hi"], r["value_lo"])}
            for r in usage
        ],
        cohorts=_plain(cohorts),
    )
