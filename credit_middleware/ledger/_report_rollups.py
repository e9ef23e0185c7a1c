"""The usage report and the usage per route, read from the rollups (``_rollups``).

For a period of whole UTC days [d0, d1) (either end open), in rows read:

- accounts, trials, refusals, cohorts, entries per kind and day, grants per source: the
  aggregate rows of the period's days, O(days x layers x cohorts) and O(days x kinds x routes);
- over all time, the top consumers come from the per-account totals by index (O(top)), and the
  active accounts and each cohort's usage from the aggregates;
- over a bounded period, active accounts, top consumers and cohort usage read each account's
  usage rows of those days: O(accounts active in the period), the one part that grows.

Each figure equals the full recomputation's (``_report_sql``) for the same rows.
"""

from __future__ import annotations

from typing import Any

from ._executor import Conn
from ._report_sql import ReportRows
from ._sums import join, total

__all__ = ["rows_from_rollups", "usage_from_rollups"]

_NONE = (-(2**62), 2**62)


def _days(d0: int | None, d1: int | None) -> tuple[int, int]:
    return (_NONE[0] if d0 is None else d0, _NONE[1] if d1 is None else d1)


async def rows_from_rollups(conn: Conn, d0: int | None, d1: int | None, top: int) -> ReportRows:
    """The report's rows for the days [d0, d1); run it in one snapshot."""
    lo, hi = _days(d0, d1)
    period = "day >= $1 AND day < $2"
    accounts = await conn.fetch(
        "SELECT layer, day, SUM(n) AS n, SUM(trials) AS trials, SUM(denied) AS denied"
        f" FROM credit_rollup_accounts WHERE {period} GROUP BY layer, day HAVING SUM(n) > 0",
        lo,
        hi,
    )
    cohorts = await conn.fetch(
        "SELECT cohort, SUM(n) AS accounts, SUM(trials) AS trials,"
        " SUM(exhausted) AS exhausted, SUM(purchased) AS purchased"
        f" FROM credit_rollup_accounts WHERE decided = 1 AND {period}"
        " GROUP BY cohort HAVING SUM(n) > 0 ORDER BY cohort",
        lo,
        hi,
    )
    entries = await conn.fetch(
        "SELECT kind, day, SUM(amount_hi) AS s_hi, SUM(amount_lo) AS s_lo,"
        " SUM(out_hi) AS out_hi, SUM(out_lo) AS out_lo"
        f" FROM credit_rollup_days WHERE {period} GROUP BY kind, day",
        lo,
        hi,
    )
    granted = await conn.fetch(
        "SELECT source, SUM(n) AS n, SUM(amount_hi) AS s_hi, SUM(amount_lo) AS s_lo"
        f" FROM credit_rollup_grants WHERE {period} GROUP BY source HAVING SUM(n) > 0",
        lo,
        hi,
    )
    if d0 is None and d1 is None:
        usage = await _usage_all_time(conn, top)
    else:
        usage = await _usage_of_days(conn, lo, hi, top)
    return ReportRows(
        accounts=[
            {
                "layer": r["layer"],
                "day": int(r["day"]),
                "n": int(r["n"]),
                "trials": int(r["trials"]),
                "denied": int(r["denied"]),
            }
            for r in accounts
        ],
        entries=[
            {"kind": r["kind"], "day": int(r["day"]), "s": total(r, "s"), "out_s": total(r, "out")}
            for r in entries
        ],
        granted=[{"source": r["source"], "s": total(r, "s"), "n": int(r["n"])} for r in granted],
        usage=usage,
        cohorts=[{k: (v if k == "cohort" else int(v)) for k, v in r.items()} for r in cohorts],
    )


async def _usage_all_time(conn: Conn, top: int) -> list[dict[str, Any]]:
    tops = await conn.fetch(
        "SELECT account_id, used_hi, used_lo FROM credit_rollup_facts WHERE consumer = 1"
        " ORDER BY used_hi DESC, used_lo DESC, account_id LIMIT $1",
        top,
    )
    sums = await conn.fetch(
        "SELECT cohort, decided, SUM(consumers) AS consumers, SUM(used_hi) AS used_hi,"
        " SUM(used_lo) AS used_lo FROM credit_rollup_accounts GROUP BY cohort, decided"
    )
    out = [
        {"part": "top", "name": r["account_id"], "value": join(r["used_hi"], r["used_lo"])}
        for r in tops
    ]
    out.append({"part": "active", "name": None, "value": sum(int(r["consumers"]) for r in sums)})
    used: dict[str, int] = {}
    for r in sums:
        if int(r["decided"]) and int(r["consumers"]):
            used[r["cohort"]] = used.get(r["cohort"], 0) + join(r["used_hi"], r["used_lo"])
    out += [{"part": "cohort", "name": c, "value": v} for c, v in used.items()]
    return out


async def _usage_of_days(conn: Conn, lo: int, hi: int, top: int) -> list[dict[str, Any]]:
    active = await conn.fetch(
        "SELECT account_id, SUM(charged_hi) AS s_hi, SUM(charged_lo) AS s_lo"
        " FROM credit_rollup_usage WHERE day >= $1 AND day < $2"
        " GROUP BY account_id HAVING SUM(calls) > 0",
        lo,
        hi,
    )
    cohorts = await conn.fetch(
        "SELECT f.cohort, SUM(u.charged_hi) AS s_hi, SUM(u.charged_lo) AS s_lo"
        " FROM credit_rollup_usage u JOIN credit_rollup_facts f ON f.account_id = u.account_id"
        " WHERE u.day >= $1 AND u.day < $2 AND f.day >= $1 AND f.day < $2 AND f.decided = 1"
        " GROUP BY f.cohort HAVING SUM(u.calls) > 0",
        lo,
        hi,
    )
    used = sorted(((r["account_id"], total(r, "s")) for r in active), key=lambda t: (-t[1], t[0]))
    out = [{"part": "top", "name": a, "value": v} for a, v in used[:top]]
    out.append({"part": "active", "name": None, "value": len(used)})
    out += [{"part": "cohort", "name": r["cohort"], "value": total(r, "s")} for r in cohorts]
    return out


async def usage_from_rollups(
    conn: Conn, d0: int | None, d1: int | None, account_id: str | None
) -> list[tuple[str, int, int, int]]:
    """(route, calls, charged, refunded) per route over the days [d0, d1): one account's from
    its usage rows, everyone's from the daily rows."""
    lo, hi = _days(d0, d1)
    if account_id is not None:
        rows = await conn.fetch(
            "SELECT route, SUM(calls) AS calls, SUM(charged_hi) AS c_hi,"
            " SUM(charged_lo) AS c_lo, SUM(refunded_hi) AS r_hi, SUM(refunded_lo) AS r_lo"
            " FROM credit_rollup_usage WHERE account_id = $3 AND day >= $1 AND day < $2"
            " GROUP BY route",
            lo,
            hi,
            account_id,
        )
        return [
            (r["route"], int(r["calls"]), total(r, "c"), total(r, "r"))
            for r in rows
            if int(r["calls"]) or total(r, "r")
        ]
    rows = await conn.fetch(
        "SELECT route, kind, SUM(n) AS n, SUM(amount_hi) AS a_hi, SUM(amount_lo) AS a_lo"
        " FROM credit_rollup_days WHERE day >= $1 AND day < $2 AND linked = 1"
        " AND kind IN ('debit', 'capture', 'refund') GROUP BY route, kind",
        lo,
        hi,
    )
    by_route: dict[str, list[int]] = {}
    for r in rows:
        cell = by_route.setdefault(r["route"], [0, 0, 0])
        if r["kind"] == "refund":
            cell[2] += total(r, "a")
        else:
            cell[0] += int(r["n"])
            cell[1] += total(r, "a")
    return [(route, calls, charged, back) for route, (calls, charged, back) in by_route.items()]
