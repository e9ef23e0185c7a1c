"""Tier changes and purchases through the admin app: JSON for scripts, a form for people.

Every change is audited with who made it (the signed-in user, or ``bearer`` for a script) and
needs an idempotency key: the JSON ``Idempotency-Key`` / ``idempotency_key``, or the one-time key
the account page embeds in its form (so a double-submitted form changes the tier once).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from ..errors import AccountNotFound, IdempotencyConflict, LedgerError
from ..ledger import Ledger
from ..money import check_account_id, check_key
from ._guard import mount_root, operator_of
from ._html import esc, html_page, link, page
from ._inputs import Problem, amount_field, idempotency_key, invalid, json_body, text_field
from ._login import checked_form
from ._session import Sessions

__all__ = ["TierWrites"]


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={"Cache-Control": "no-store"})


class TierWrites:
    def __init__(self, ledger: Ledger, sessions: Sessions | None, tiers: Sequence[str]) -> None:
        self.ledger = ledger
        self.sessions = sessions
        self.tiers = tiers

    def _tier(self, value: object) -> str:
        if not isinstance(value, str):
            raise invalid('tier must be a string, e.g. "pro"')
        if self.tiers and value not in self.tiers:
            raise invalid(f"unknown tier {value!r}: one of {', '.join(self.tiers)}")
        return value

    @staticmethod
    def _who(request: Request) -> dict[str, str]:
        operator = operator_of(request)
        return {"by": operator.user, "via": operator.via}

    async def tier(self, request: Request, account_id: str) -> Response:
        """``POST /api/accounts/{id}/tier`` ``{"tier": "pro", "reason": "..."}``."""
        data = await json_body(request)
        key = idempotency_key(request, data)
        change = await self.ledger.set_tier(
            account_id,
            self._tier(data.get("tier")),
            key=key,
            reason=text_field(data, "reason"),
            layer="admin",
            metadata=self._who(request),
        )
        return _json(change.to_json(), 200 if change.replayed else 201)

    async def purchase(self, request: Request, account_id: str) -> Response:
        """``POST /api/accounts/{id}/purchases`` ``{"amount": "20", "tier": "pro"}``."""
        data = await json_body(request)
        key, amount = idempotency_key(request, data), amount_field(data)
        tier = data.get("tier")
        days = data.get("expires_in_days")
        if days is not None and (
            not isinstance(days, int) or isinstance(days, bool) or not 0 < days <= 3650
        ):
            raise invalid("expires_in_days must be a whole number of days, 1 to 3650")
        bought = await self.ledger.purchase(
            account_id,
            amount,
            key=key,
            tier=self._tier(tier) if tier is not None else None,
            expires_in=timedelta(days=days) if days else None,
            reason=text_field(data, "reason"),
            layer="admin",
            metadata=self._who(request),
        )
        receipt, change = bought.receipt, bought.tier_change
        body = {
            "replayed": bought.replayed,
            "available": str(receipt.available),
            "entry": receipt.entry.to_json(),
            "grant_id": receipt.grant.grant_id if receipt.grant else None,
            "tier_change": change.to_json() if change else None,
        }
        return _json(body, 200 if bought.replayed else 201)

    async def history(self, request: Request, account_id: str) -> Response:
        """``GET /api/accounts/{id}/tiers``: the tier changes, newest first."""
        if await self.ledger.get_account(account_id) is None:
            raise AccountNotFound(account_id)
        changes = await self.ledger.tier_history(account_id, limit=1000)
        return _json({"changes": [c.to_json() for c in changes]})

    async def form(self, request: Request) -> Response:
        """``POST /account/tier`` from the account page; answers with the page again (303)."""
        root = mount_root(request.scope)
        account_id: str | None = None
        try:
            data = await checked_form(request, self.sessions)
            account_id = check_account_id(data.get("id", ""))
            raw_key = data.get("key", "")
            key = check_key("admin:form:" + check_key(raw_key))
            reason = data.get("reason", "").strip() or None
            await self.ledger.set_tier(
                account_id,
                self._tier(data.get("tier", "")),
                key=key,
                reason=reason,
                layer="admin",
                metadata=self._who(request),
            )
        except Problem as exc:
            return _form_error(root, account_id, exc.status, exc.detail)
        except AccountNotFound:
            return _form_error(root, None, 404, "no such account")
        except (IdempotencyConflict, LedgerError) as exc:
            return _form_error(root, account_id, 409, str(exc))
        except ValueError as exc:
            return _form_error(root, account_id, 400, str(exc))
        target = f"{root}/account?{urlencode({'id': account_id, 'done': 'tier'})}"
        return RedirectResponse(target, status_code=303)


def _form_error(root: str, account_id: str | None, status: int, message: str) -> Response:
    back = link(root, "/account", "Back to the account", id=account_id) if account_id else ""
    body = f'<h1>Not done</h1><p class="error" id="error">{esc(message)}</p><p>{back}</p>'
    return html_page(page("Not done", body), status)
