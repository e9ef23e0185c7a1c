"""The operator's pages: account search, one account (balance, grants, holds, history, tier and
a form to change it), and usage per route. Server-rendered HTML; every number has a
``data-k`` attribute naming it, so tests (and scrapers) read values, not layout."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response

from ..errors import AccountNotFound
from ..ledger import Account, Ledger
from ..money import check_account_id, from_micros
from ._guard import mount_root, operator_of
from ._html import esc, form, html_page, link, nav, page, table
from ._inputs import int_param, time_param
from ._session import Sessions

__all__ = ["Pages"]

_PAGE = 50


def _k(key: str, value: object) -> str:
    return f'<span data-k="{esc(key)}">{esc(value)}</span>'


def _when(value: object) -> str:
    text = value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else str(value)
    return esc(text.replace("+00:00", "Z"))


class Pages:
    """HTML pages over one ledger; ``tiers`` (if given) fills the tier form's choices."""

    def __init__(
        self, ledger: Ledger, sessions: Sessions | None, title: str, tiers: Sequence[str]
    ) -> None:
        self.ledger = ledger
        self.sessions = sessions
        self.title = title
        self.tiers = tiers

    def frame(self, request: Request, title: str, body: str, status: int = 200) -> Response:
        operator = operator_of(request)
        csrf = None
        if operator.session is not None and self.sessions is not None:
            csrf = self.sessions.csrf(operator.session)
        top = nav(mount_root(request.scope), operator.user, csrf)
        return html_page(page(f"{title} · {self.title}", body, top=top), status)

    def csrf(self, request: Request) -> str | None:
        operator = operator_of(request)
        if operator.session is None or self.sessions is None:
            return None
        return self.sessions.csrf(operator.session)

    def error(self, request: Request, status: int, message: str, back: str = "") -> Response:
        body = f'<h1>Not done</h1><p class="error" id="error">{esc(message)}</p>{back}'
        return self.frame(request, "Error", body, status)

    # ------------------------------------------------------------------ search

    async def accounts(self, request: Request) -> Response:
        root = mount_root(request.scope)
        query = request.query_params.get("q", "")
        found = await self.ledger.search_accounts(query, limit=100)
        rows = [self._account_row(root, a) for a in found]
        body = (
            "<h1>Accounts</h1>"
            f'<form method="get" action="{esc(root)}/accounts" id="search">'
            f'<input name="q" id="q" value="{esc(query)}" size="40"'
            ' placeholder="account id prefix, e-mail, or @domain"> <button>Search</button></form>'
            f'<p class="note">{len(found)} shown (newest first, at most 100).'
            f" {link(root, '/export/accounts.csv', 'Export CSV', q=query)}</p>"
            + table(["account", "tier", "balance", "e-mail", "created"], rows, numeric=(2,))
        )
        return self.frame(request, "Accounts", body)

    @staticmethod
    def _account_row(root: str, a: Account) -> list[str]:
        email = a.metadata.get("email") or (
            "@" + str(a.metadata["email_domain"]) if a.metadata.get("email_domain") else ""
        )
        return [
            link(root, "/account", a.account_id, id=a.account_id),
            esc(a.tier),
            esc(a.balance),
            esc(email),
            _when(a.created_at),
        ]

    # ------------------------------------------------------------------ one account

    async def account(self, request: Request) -> Response:
        root = mount_root(request.scope)
        account_id = check_account_id(request.query_params.get("id", ""))
        before = int_param(request, "before", None, 1, 2**63 - 1)
        account = await self.ledger.get_account(account_id)
        if account is None:
            raise AccountNotFound(account_id)
        bal = await self.ledger.balance(account_id)
        holds = await self.ledger.holds(account_id)
        entries = await self.ledger.history(account_id, limit=_PAGE, before=before)
        changes = await self.ledger.tier_history(account_id, limit=20)
        usage = await self.ledger.usage_by_route(account_id=account_id)
        tiles = "".join(
            f'<div class="tile"><b>{_k(k, v)}</b><span>{esc(label)}</span></div>'
            for k, v, label in (
                ("available", bal.available, "available"),
                ("spendable", bal.spendable, "spendable"),
                ("held", bal.held, "held"),
                ("tier", account.tier, "tier"),
                ("status", account.status, "status"),
                ("cohort", account.cohort or "-", "cohort"),
            )
        )
        grants = [
            [
                esc(g.grant_id),
                esc(g.source),
                esc(g.amount),
                esc(g.remaining),
                esc(g.priority),
                _when(g.expires_at) if g.expires_at else "never",
            ]
            for g in bal.grants
        ]
        hold_rows = [
            [esc(h.hold_id), esc(from_micros(h.amount_micros)), _when(h.expires_at)] for h in holds
        ]
        history = [
            [
                esc(e.entry_id),
                _when(e.created_at),
                esc(e.kind),
                esc(e.amount),
                esc(e.balance_after),
                esc(e.route or e.layer or e.model or ""),
            ]
            for e in entries
        ]
        older = ""
        if len(entries) == _PAGE:
            older = link(
                root, "/account", "Older entries →", id=account_id, before=entries[-1].entry_id
            )
        tier_rows = [
            [
                _when(c.created_at),
                esc(c.old_tier),
                esc(c.new_tier),
                esc(c.metadata.get("by") or c.layer or ""),
                esc(c.reason or ""),
            ]
            for c in changes
        ]
        usage_rows = [
            [
                esc(u.route or "-"),
                esc(u.calls),
                *(esc(u.to_json()[k]) for k in ("charged", "refunded", "net")),
            ]
            for u in usage
        ]
        done = (
            '<p class="note" id="done">Tier changed.</p>'
            if request.query_params.get("done")
            else ""
        )
        body = (
            f'<h1>Account <span id="account-id">{esc(account_id)}</span></h1>{done}'
            f'<div class="tiles">{tiles}</div>'
            + self._tier_form(root, request, account)
            + "<h2>Grants</h2>"
            + table(
                ["grant", "source", "amount", "remaining", "priority", "expires"],
                grants,
                numeric=(2, 3, 4),
            )
            + "<h2>Active holds</h2>"
            + table(["hold", "amount", "expires"], hold_rows, numeric=(1,))
            + "<h2>Tier changes</h2>"
            + table(["when", "from", "to", "by", "reason"], tier_rows)
            + "<h2>Usage per route</h2>"
            + table(
                ["route", "calls", "charged", "refunded", "net"], usage_rows, numeric=(1, 2, 3, 4)
            )
            + '<h2 id="history">History</h2><p class="note">'
            + link(root, "/export/history.csv", "Export all entries as CSV", id=account_id)
            + "</p>"
            + table(
                ["entry", "when", "kind", "amount", "balance after", "route / layer"],
                history,
                numeric=(0, 3, 4),
            )
            + f"<p>{older}</p>"
        )
        return self.frame(request, f"Account {account_id}", body)

    def _tier_form(self, root: str, request: Request, account: Account) -> str:
        if self.tiers:
            options = "".join(
                f'<option value="{esc(t)}"{" selected" * (t == account.tier)}>{esc(t)}</option>'
                for t in self.tiers
            )
            field = f'<select name="tier" id="tier">{options}</select>'
        else:
            field = (
                f'<input name="tier" id="tier" value="{esc(account.tier)}" maxlength="64" required>'
            )
        inner = (
            f'<input type="hidden" name="id" value="{esc(account.account_id)}">'
            f'<input type="hidden" name="key" value="{secrets.token_urlsafe(12)}">'
            f"<label>Tier {field}</label> "
            '<label>Reason <input name="reason" id="reason" maxlength="500" size="40"></label> '
            '<button id="change-tier">Change tier</button>'
            '<p class="note">Running apps apply a new tier within 60 seconds.</p>'
        )
        return (
            '<div class="box"><h2>Change tier</h2>'
            + form(root + "/account/tier", self.csrf(request), inner, form_id="tier-form")
            + "</div>"
        )

    # ------------------------------------------------------------------ usage

    async def usage(self, request: Request) -> Response:
        root = mount_root(request.scope)
        since, until = time_param(request, "since"), time_param(request, "until")
        usage = await self.ledger.usage_by_route(since=since, until=until)
        rows = [
            [
                esc(u.route or "-"),
                _k(f"usage.{u.route}.calls", u.calls),
                *(
                    _k(f"usage.{u.route}.{k}", u.to_json()[k])
                    for k in ("charged", "refunded", "net")
                ),
            ]
            for u in usage
        ]
        s = request.query_params.get("since", "")
        t = request.query_params.get("until", "")
        body = (
            "<h1>Usage per route</h1>"
            f'<form method="get" action="{esc(root)}/usage">From <input type="date" name="since"'
            f' value="{esc(s[:10])}"> to <input type="date" name="until" value="{esc(t[:10])}">'
            " <button>Show</button></form>"
            f'<p class="note">Debits and captures written in the period, with the refunds made'
            f" against them. {link(root, '/export/usage.csv', 'Export CSV', since=s, until=t)}</p>"
            + table(["route", "calls", "charged", "refunded", "net"], rows, numeric=(1, 2, 3, 4))
        )
        return self.frame(request, "Usage per route", body)
