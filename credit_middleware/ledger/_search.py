"""Operator reads: find accounts by id prefix or e-mail, and usage per route.

These are admin queries, not hot-path ones: an e-mail search reads the accounts' metadata (the
``email`` an app stored there, or the ``email_domain`` the provisioner keeps) without an index,
and is bounded by ``limit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..money import from_micros
from ._executor import Conn
from ._sums import exact_sum, total
from ._tx import ACCOUNT_COLS
from .models import Account

__all__ = ["RouteUsage", "by_net", "route_usage_from_entries", "search_accounts"]

_MAX_QUERY = 255
_JSON_TEXT = {
    "postgresql": "(metadata::jsonb ->> '{field}')",
    "sqlite": "json_extract(metadata, '$.{field}')",
}


def _field(conn: Conn, name: str) -> str:
    return _JSON_TEXT[conn.dialect].format(field=name)


def check_query(query: object) -> str:
    if not isinstance(query, str) or len(query) > _MAX_QUERY or "\x00" in query:
        raise ValueError(f"a search is a str of at most {_MAX_QUERY} characters without NUL")
    return query.strip()


async def search_accounts(conn: Conn, query: str, limit: int) -> list[Account]:
    """``alice`` → ids starting with it (case-sensitive); ``a@b.c`` → that e-mail (any case);
    ``@b.c`` → every account of that e-mail domain; empty → the newest accounts."""
    sql = f"SELECT {ACCOUNT_COLS} FROM credit_accounts"
    args: list[Any] = []
    if not query:
        pass
    elif query.startswith("@"):
        domain = query[1:].lower()
        sql += (
            f" WHERE lower({_field(conn, 'email_domain')}) = $1"
            f" OR lower({_field(conn, 'email')}) LIKE $2 ESCAPE '\\'"
        )
        args += [domain, "%@" + _escape_like(domain)]
    elif "@" in query:
        sql += f" WHERE lower({_field(conn, 'email')}) = $1"
        args.append(query.lower())
    else:  # substr, not LIKE: ids are case-sensitive, SQLite's LIKE is not
        sql += " WHERE substr(account_id, 1, $2) = $1"
        args += [query, len(query)]
    sql += f" ORDER BY created_at DESC, account_id LIMIT ${len(args) + 1}"
    rows = await conn.fetch(sql, *args, limit)
    return [Account.from_row(r) for r in rows]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True, slots=True)
class RouteUsage:
    """What one route was charged in a period: calls billed, credits charged and refunded."""

    route: str
    calls: int
    charged_micros: int
    refunded_micros: int

    def to_json(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "calls": self.calls,
            "charged": str(from_micros(self.charged_micros)),
            "refunded": str(from_micros(self.refunded_micros)),
            "net": str(from_micros(self.charged_micros - self.refunded_micros)),
        }


def by_net(rows: list[tuple[str, int, int, int]]) -> list[RouteUsage]:
    """(route, calls, charged, refunded) rows as :class:`RouteUsage`, largest net first."""
    out = [RouteUsage(*r) for r in rows]
    return sorted(out, key=lambda u: (-(u.charged_micros - u.refunded_micros), u.route))


async def route_usage_from_entries(
    conn: Conn, lo: int, hi: int, account_id: str | None
) -> list[tuple[str, int, int, int]]:
    """Debits and captures per route written in [lo, hi), with the refunds made against them,
    counted from the entries (exact sums)."""
    where = "e.created_at >= $1 AND e.created_at < $2"
    args: list[Any] = [lo, hi]
    if account_id is not None:
        where += " AND e.account_id = $3"
        args.append(account_id)
    charged = await conn.fetch(
        f"SELECT COALESCE(e.route, '') AS route, COUNT(*) AS calls, {exact_sum('e.amount', 's')}"
        f" FROM credit_entries e WHERE e.kind IN ('debit', 'capture') AND {where}"
        " GROUP BY COALESCE(e.route, '')",
        *args,
    )
    refunded = await conn.fetch(
        f"SELECT COALESCE(c.route, '') AS route, {exact_sum('e.amount', 's')}"
        " FROM credit_entries e JOIN credit_entries c ON c.entry_id = e.ref_entry_id"
        f" WHERE e.kind = 'refund' AND {where} GROUP BY COALESCE(c.route, '')",
        *args,
    )
    back = {r["route"]: total(r, "s") for r in refunded}
    out = [(r["route"], int(r["calls"]), total(r, "s"), back.pop(r["route"], 0)) for r in charged]
    return out + [(route, 0, 0, micros) for route, micros in back.items()]
