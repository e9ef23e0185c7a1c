"""The admin app's JSON API handlers (``/api/...``) over one ledger; see ``app.py``."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import (
    AccountNotFound,
    BackendUnavailable,
    IdempotencyConflict,
    InsufficientCredits,
    LedgerError,
)
from ..ledger import Account, Ledger, Receipt
from ..money import check_account_id, from_micros
from ..ops.metrics import Refusal
from ..ops.report import balance_json, build_report
from . import _csv
from ._guard import mount_root, operator_of
from ._html import CSP, nav
from ._inputs import (
    Problem,
    amount_field,
    idempotency_key,
    int_param,
    invalid,
    json_body,
    text_field,
    time_param,
)
from ._tier_api import TierWrites
from .dashboard import render_dashboard
from .pages import Pages

__all__ = ["Api", "RefusalSource", "problems"]

log = logging.getLogger("credit_middleware.admin")

_GRANT_SOURCES = ("admin", "promo", "purchase")
_ACTIONS = ("balance", "history", "grants", "refunds", "adjustments", "tier", "tiers", "purchases")


class RefusalSource(Protocol):
    """Anything that keeps recent refusals: ``metrics.RecentRefusals``, ``PrometheusObserver``."""

    def recent_refusals(self) -> list[Refusal]: ...


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={"Cache-Control": "no-store"})


def _split(rest: str) -> tuple[str, str | None]:
    """``{account_id}`` or ``{account_id}/{action}``; account ids may themselves hold ``/``."""
    head, _, tail = rest.rpartition("/")
    if head and tail in _ACTIONS:
        return head, tail
    return rest, None


def _receipt(receipt: Receipt) -> dict[str, Any]:
    return {
        "replayed": receipt.replayed,
        "available": str(receipt.available),
        "entry": receipt.entry.to_json(),
        "grant_id": receipt.grant.grant_id if receipt.grant else None,
    }


Handler = Callable[[Request], Awaitable[Response]]


def problems(handler: Handler, pages: Pages | None = None) -> Handler:
    """Turn the library's errors into problem+json (an HTML page for ``pages``); nothing
    escapes as a 500 with a trace."""
    if pages is not None:
        inner = problems(handler)

        async def as_page(request: Request) -> Response:
            response = await inner(request)
            if response.media_type != "application/problem+json":
                return response
            detail = json.loads(bytes(response.body)).get("detail", "refused")
            return pages.error(request, response.status_code, str(detail))

        return as_page

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Problem as exc:
            return exc.response()
        except AccountNotFound:
            return Problem(404, "account-not-found", "no such account").response()
        except (IdempotencyConflict, InsufficientCredits) as exc:
            reason = "idempotency-conflict"
            if isinstance(exc, InsufficientCredits):
                reason = "insufficient-credits"
            return Problem(409, reason, str(exc)).response()
        except LedgerError as exc:
            return Problem(409, "refused-by-ledger", str(exc)).response()
        except BackendUnavailable:
            return Problem(503, "ledger-unavailable", "the ledger is unavailable").response()
        except ValueError as exc:  # InvalidAmount, InvalidAccountId and the ledger's checks
            return invalid(str(exc)).response()

    return wrapped


class Api:
    def __init__(self, ledger: Ledger, refusals: RefusalSource | None, title: str) -> None:
        self.ledger = ledger
        self.refusal_source = refusals
        self.title = title
        self.dashboard = problems(self._dashboard)
        self.report = problems(self._report)
        self.verify = problems(self._verify)
        self.refusals = problems(self._refusals)
        self.accounts = problems(self._accounts)
        self.search = problems(self._search)
        self.usage = problems(self._usage)
        self.pages: Pages | None = None
        self.writes: TierWrites | None = None

    async def history_csv(self, request: Request) -> Response:
        return await _csv.history_csv(self.ledger, request)

    async def usage_csv(self, request: Request) -> Response:
        return await _csv.usage_csv(self.ledger, request)

    async def accounts_csv(self, request: Request) -> Response:
        return await _csv.accounts_csv(self.ledger, request)

    async def _search(self, request: Request) -> Response:
        limit = int_param(request, "limit", 50, 1, 1000) or 50
        found = await self.ledger.search_accounts(request.query_params.get("q", ""), limit=limit)
        return _json({"accounts": [_account_json(a) for a in found]})

    async def _usage(self, request: Request) -> Response:
        account_id = request.query_params.get("account_id")
        usage = await self.ledger.usage_by_route(
            since=time_param(request, "since"),
            until=time_param(request, "until"),
            account_id=check_account_id(account_id) if account_id else None,
        )
        return _json({"routes": [u.to_json() for u in usage]})

    def _recent(self) -> list[dict[str, Any]]:
        source = self.refusal_source
        return [r.to_json() for r in source.recent_refusals()] if source is not None else []

    async def _build(self, request: Request) -> dict[str, Any]:
        report = await build_report(
            self.ledger, since=time_param(request, "since"), until=time_param(request, "until")
        )
        return report.to_json()

    async def _dashboard(self, request: Request) -> Response:
        data = await self._build(request)
        operator = operator_of(request)
        sessions = self.pages.sessions if self.pages is not None else None
        csrf = sessions.csrf(operator.session) if sessions and operator.session else None
        top = nav(mount_root(request.scope), operator.user, csrf)
        html = render_dashboard(data, self._recent(), title=self.title, top=top)
        headers = {"Cache-Control": "no-store", "Content-Security-Policy": CSP}
        return Response(html, media_type="text/html; charset=utf-8", headers=headers)

    async def _report(self, request: Request) -> Response:
        return _json(await self._build(request))

    async def _verify(self, request: Request) -> Response:
        result = await self.ledger.verify()
        return _json(result.to_json())

    async def _refusals(self, request: Request) -> Response:
        return _json({"refusals": self._recent()})

    async def _accounts(self, request: Request) -> Response:
        account_id, action = _split(request.path_params["rest"])
        account_id = check_account_id(account_id)
        if request.method == "GET":
            if action is None:
                return await self._lookup(account_id)
            if action == "balance":
                return await self._balance(account_id)
            if action == "history":
                return await self._history(request, account_id)
            if action == "tiers" and self.writes is not None:
                return await self.writes.history(request, account_id)
        elif action in ("grants", "refunds", "adjustments"):
            return await self._write(request, account_id, action)
        elif action == "tier" and self.writes is not None:
            return await self.writes.tier(request, account_id)
        elif action == "purchases" and self.writes is not None:
            return await self.writes.purchase(request, account_id)
        raise Problem(405 if action else 404, "not-found", "no such route for this method")

    async def _lookup(self, account_id: str) -> Response:
        account = await self.ledger.get_account(account_id)
        if account is None:
            raise AccountNotFound(account_id)
        return _json(_account_json(account))

    async def _balance(self, account_id: str) -> Response:
        return _json(balance_json(await self.ledger.balance(account_id)))

    async def _history(self, request: Request, account_id: str) -> Response:
        limit = int_param(request, "limit", 50, 1, 1000)
        before = int_param(request, "before", None, 1, 2**63 - 1)
        if await self.ledger.get_account(account_id) is None:
            raise AccountNotFound(account_id)
        entries = await self.ledger.history(account_id, limit=limit or 50, before=before)
        more = len(entries) == limit
        return _json(
            {
                "entries": [e.to_json() for e in entries],
                "next_before": entries[-1].entry_id if entries and more else None,
            }
        )

    async def _write(self, request: Request, account_id: str, action: str) -> Response:
        data = await json_body(request)
        key, amount = idempotency_key(request, data), amount_field(data)
        reason = text_field(data, "reason", required=action == "adjustments")
        meta = {"reason": reason} if reason else None
        if action == "grants":
            source = data.get("source", "admin")
            if source not in _GRANT_SOURCES:
                raise invalid(f"source must be one of {', '.join(_GRANT_SOURCES)}")
            days = data.get("expires_in_days")
            if days is not None and (
                not isinstance(days, int) or isinstance(days, bool) or not 0 < days <= 3650
            ):
                raise invalid("expires_in_days must be a whole number of days, 1 to 3650")
            receipt = await self.ledger.grant(
                account_id,
                amount,
                source=source,
                key=key,
                expires_in=timedelta(days=days) if days else None,
                layer="admin",
                metadata=meta,
            )
        elif action == "refunds":
            entry_id = data.get("entry_id")
            if entry_id is not None and (
                not isinstance(entry_id, int) or isinstance(entry_id, bool)
            ):
                raise invalid("entry_id must be a whole number")
            receipt = await self.ledger.refund(
                account_id, amount, entry_id=entry_id, key=key, layer="admin", metadata=meta
            )
        else:
            assert reason is not None
            receipt = await self.ledger.adjust(account_id, amount, key=key, reason=reason)
        log.info("admin %s %s (replayed=%s)", action, receipt.entry.kind, receipt.replayed)
        log.debug("admin %s on account %r: entry %d", action, account_id, receipt.entry.entry_id)
        return _json(_receipt(receipt), 200 if receipt.replayed else 201)


def _account_json(account: Account) -> dict[str, Any]:
    return {
        "account_id": account.account_id,
        "tier": account.tier,
        "status": account.status,
        "balance": str(account.balance),
        "held": str(from_micros(account.held_micros)),
        "cohort": account.cohort,
        "metadata": dict(account.metadata),
        "created_at": account.created_at.isoformat(),
        "updated_at": account.updated_at.isoformat(),
    }
