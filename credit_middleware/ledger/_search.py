"""Operator reads: find accounts by id prefix or e-mail, and usage per route.

These are admin queries, not hot-path ones. Each search reads an index of migration 10: the
e-mail (``email`` an app stored in the metadata) and the e-mail domain (``email_domain``, which
the provisioner keeps, else the part of ``email`` after its ``@``) are indexed expressions over
the metadata, with the creation time, so the newest matches come first without a sort.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..money import from_micros
from ._executor import Conn
from ._scale_schema import domain_key, email_key
from ._sums import exact_sum, total
from ._tx import ACCOUNT_COLS
from .models import Account

__all__ = ["RouteUsage", "by_net", "route_usage_from_entries", "search_accounts"]

_MAX_QUERY = 255
_PREFIX = {
    "postgresql": 'account_id COLLATE "C" >= $1 AND account_id COLLATE "C" < $2',
    "sqlite": "account_id >= $1 AND account_id < $2",
}
_FROM = {
    "postgresql": 'account_id COLLATE "C" >= $1',
    "sqlite": "account_id >= $1",
}


def check_query(query: object) -> str:
    if not isinstance(query, str) or len(query) > _MAX_QUERY or "\x00" in query:
        raise ValueError(f"a search is a str of at most {_MAX_QUERY} characters without NUL")
    return query.strip()


def _past(prefix: str) -> str | None:
    """The first string, in code point order, after every string that starts with ``prefix``
    (None: there is none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code <= 0x10FFFF:
            chars[-1] = chr(0xE000 if 0xD800 <= code <= 0xDFFF else code)  # no surrogates
            return "".join(chars)
        chars.pop()
    return None


async def search_accounts(conn: Conn, query: str, limit: int) -> list[Account]:
    """``alice`` → ids starting with it (case-sensitive); ``a@b.c`` → that e-mail (any case);
    ``@b.c`` → every account of that e-mail domain; empty → the newest accounts. Newest
    first, each by an index: an e-mail, a domain or no query reads ``limit`` rows; an id
    prefix reads the accounts it matches (a short prefix matches many)."""
    sql = f"SELECT {ACCOUNT_COLS} FROM credit_accounts"
    args: list[Any] = []
    if not query:
        pass
    elif query.startswith("@"):
        sql += f" WHERE {domain_key(conn.dialect)} = $1"
        args.append(query[1:].lower())
    elif "@" in query:
        sql += f" WHERE {email_key(conn.dialect)} = $1"
        args.append(query.lower())
    else:  # a range of the id index, in code point order (ids are case-sensitive)
        past = _past(query)
        if past is None:
            sql += f" WHERE {_FROM[conn.dialect]}"
            args.append(query)
        else:
            sql += f" WHERE {_PREFIX[conn.dialect]}"
            args += [query, past]
    sql += f" ORDER BY created_at DESC, account_id LIMIT ${len(args) + 1}"
    rows = await conn.fetch(sql, *args, limit)
    return [Account.from_row(r) for r in rows]


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
