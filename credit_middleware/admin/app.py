"""The admin API: account lookup, balance, history, grant, refund, adjust, verify, report.

Mount it (``Mount("/admin", app=admin_app(ledger, authorize=...))``); every route sits behind
the guard. Amounts travel as decimal strings of credits (``"2.5"``): a JSON number is refused,
because a float is not money. Every write needs an idempotency key (the ``Idempotency-Key``
header or an ``idempotency_key`` field); the same key twice moves money once. Errors are
``application/problem+json``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from ..errors import (
    AccountNotFound,
    BackendUnavailable,
    ConfigurationError,
    IdempotencyConflict,
    InsufficientCredits,
    LedgerError,
)
from ..ledger import Ledger, Receipt
from ..metrics import Refusal
from ..money import check_account_id, from_micros
from ..report import build_report
from ._guard import AdminGuard, Authorize
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
from .dashboard import render_dashboard

__all__ = ["RefusalSource", "admin_app"]

log = logging.getLogger("credit_middleware.admin")

_GRANT_SOURCES = ("admin", "promo", "purchase")
_ACTIONS = ("balance", "history", "grants", "refunds", "adjustments")


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


def admin_app(
    ledger: Ledger,
    *,
    authorize: Authorize | None = None,
    refusals: RefusalSource | None = None,
    title: str = "Credit usage",
) -> ASGIApp:
    """The admin API and dashboard as one ASGI app, behind ``authorize`` (required).

    ``refusals`` feeds the dashboard's "recent refusals" (pass the ``PrometheusObserver`` or a
    ``RecentRefusals`` given to the middleware as its observer).
    """
    if authorize is None:
        raise ConfigurationError(
            "admin_app needs authorize=<async check>, e.g. bearer_token_guard(token);"
            " nothing is open by default"
        )
    if not isinstance(ledger, Ledger):
        raise ConfigurationError("admin_app needs a credit_middleware.Ledger")
    api = _Api(ledger, refusals, title)
    routes = [
        Route("/", api.dashboard, methods=["GET"]),
        Route("/api/report", api.report, methods=["GET"]),
        Route("/api/verify", api.verify, methods=["GET"]),
        Route("/api/refusals", api.refusals, methods=["GET"]),
        Route("/api/accounts/{rest:path}", api.accounts, methods=["GET", "POST"]),
    ]
    return AdminGuard(Starlette(routes=routes), authorize=authorize)


Handler = Callable[[Request], Awaitable[Response]]


def _problems(handler: Handler) -> Handler:
    """Turn the library's errors into problem+json; nothing escapes as a 500 with a trace."""

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


class _Api:
    def __init__(self, ledger: Ledger, refusals: RefusalSource | None, title: str) -> None:
        self.ledger = ledger
        self.refusal_source = refusals
        self.title = title
        self.dashboard = _problems(self._dashboard)
        self.report = _problems(self._report)
        self.verify = _problems(self._verify)
        self.refusals = _problems(self._refusals)
        self.accounts = _problems(self._accounts)

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
        html = render_dashboard(data, self._recent(), title=self.title)
        headers = {"Cache-Control": "no-store", "Content-Security-Policy": _CSP}
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
        elif action in ("grants", "refunds", "adjustments"):
            return await self._write(request, account_id, action)
        raise Problem(405 if action else 404, "not-found", "no such route for this method")

    async def _lookup(self, account_id: str) -> Response:
        account = await self.ledger.get_account(account_id)
        if account is None:
            raise AccountNotFound(account_id)
        return _json(
            {
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
        )

    async def _balance(self, account_id: str) -> Response:
        bal = await self.ledger.balance(account_id)
        grants = [
            {
                "grant_id": g.grant_id,
                "source": g.source,
                "amount": str(g.amount),
                "remaining": str(g.remaining),
                "expires_at": g.expires_at.isoformat() if g.expires_at else None,
            }
            for g in bal.grants
        ]
        return _json(
            {
                "account_id": bal.account_id,
                "tier": bal.tier,
                "spendable": str(bal.spendable),
                "held": str(bal.held),
                "available": str(bal.available),
                "grants": grants,
            }
        )

    async def _history(self, request: Request, account_id: str) -> Response:
        limit = int_param(request, "limit", 50, 1, 1000)
        before = int_param(request, "before", None, 1, 2**62)
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


# Inline styles and SVG only; nothing is loaded from anywhere, scripts are not needed.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'"
