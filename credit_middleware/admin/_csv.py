"""CSV exports: an account's whole history (streamed page by page), usage per route, accounts.

Amounts are exact decimal strings of credits. A text cell that a spreadsheet would run as a
formula (starting ``=``, ``+``, ``-``, ``@``, tab or CR) is prefixed with ``'``; amounts are
numbers and left alone.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Sequence

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import AccountNotFound
from ..ledger import Ledger
from ..money import check_account_id, from_micros
from ._inputs import time_param

__all__ = ["accounts_csv", "history_csv", "usage_csv"]

_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _text(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def _line(cells: Sequence[object]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()


def _download(name: str) -> dict[str, str]:
    return {
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


_HISTORY = (
    "entry_id",
    "created_at",
    "kind",
    "amount",
    "delta",
    "balance_after",
    "held_after",
    "grant_id",
    "hold_id",
    "ref_entry_id",
    "idempotency_key",
    "layer",
    "route",
    "model",
    "metadata",
)


async def history_csv(ledger: Ledger, request: Request) -> Response:
    account_id = check_account_id(request.query_params.get("id", ""))
    if await ledger.get_account(account_id) is None:
        raise AccountNotFound(account_id)

    async def rows() -> AsyncIterator[str]:
        yield _line(_HISTORY)
        before: int | None = None
        while True:
            page = await ledger.history(account_id, limit=1000, before=before)
            for e in page:
                d = e.to_json()
                yield _line(
                    [
                        *(d[k] for k in ("entry_id", "created_at", "kind", "amount", "delta")),
                        *(d[k] for k in ("balance_after", "held_after")),
                        *(d[k] or "" for k in ("grant_id", "hold_id", "ref_entry_id")),
                        *(_text(d[k]) for k in ("idempotency_key", "layer", "route", "model")),
                        _text(json.dumps(d["metadata"], sort_keys=True) if d["metadata"] else ""),
                    ]
                )
            if len(page) < 1000:
                return
            before = page[-1].entry_id

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in account_id)[:80]
    return StreamingResponse(
        rows(), media_type="text/csv; charset=utf-8", headers=_download(f"history-{safe}.csv")
    )


async def usage_csv(ledger: Ledger, request: Request) -> Response:
    usage = await ledger.usage_by_route(
        since=time_param(request, "since"), until=time_param(request, "until")
    )
    lines = [_line(("route", "calls", "charged", "refunded", "net"))]
    for u in usage:
        data = u.to_json()
        lines.append(
            _line((_text(u.route), u.calls, data["charged"], data["refunded"], data["net"]))
        )
    return Response(
        "".join(lines), media_type="text/csv; charset=utf-8", headers=_download("usage.csv")
    )


async def accounts_csv(ledger: Ledger, request: Request) -> Response:
    found = await ledger.search_accounts(request.query_params.get("q", ""), limit=1000)
    lines = [_line(("account_id", "tier", "status", "balance", "held", "cohort", "created_at"))]
    for a in found:
        lines.append(
            _line(
                (
                    _text(a.account_id),
                    _text(a.tier),
                    a.status,
                    a.balance,
                    from_micros(a.held_micros),
                    _text(a.cohort),
                    a.created_at.isoformat(),
                )
            )
        )
    return Response(
        "".join(lines), media_type="text/csv; charset=utf-8", headers=_download("accounts.csv")
    )
