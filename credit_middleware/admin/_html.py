"""The admin pages' shared frame: one stylesheet, a navigation bar, tables and forms.

Plain server-rendered HTML: no script, no framework, nothing loaded from anywhere. Every value
shown is escaped here or by the caller with :func:`esc`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from urllib.parse import urlencode

from starlette.responses import HTMLResponse

__all__ = ["CSP", "STYLE", "esc", "form", "html_page", "link", "nav", "page", "table"]

# Inline styles and SVG only; nothing is loaded from anywhere, scripts are not needed.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'"
)

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f8fafc;color:#0f172a}
nav{background:#0f172a;padding:8px 24px;display:flex;gap:18px;align-items:center}
nav a{color:#f8fafc;text-decoration:none} nav .who{margin-left:auto;color:#cbd5e1}
nav form{display:inline;margin:0;padding:0} nav button{font:inherit}
.page{padding:16px 24px} h1{font-size:20px;margin:0 0 12px} h2{font-size:16px;margin:18px 0 6px}
table.t{border-collapse:collapse;width:100%;font-size:13px;background:#fff}
table.t td,table.t th{border-bottom:1px solid #e2e8f0;padding:4px 8px;text-align:left}
table.t td.n,table.t th.n{text-align:right;font-variant-numeric:tabular-nums}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.tile{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:8px 14px;min-width:110px}
.tile b{display:block;font-size:20px} .tile>span{color:#475569;font-size:12px}
.box{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px 16px;margin:8px 0}
.error{color:#b91c1c} .note{color:#475569} input,button,select{font:inherit;padding:3px 6px}
.login{max-width:360px;margin:60px auto} .login label{display:block;margin:10px 0 2px}
.login input{width:100%;box-sizing:border-box}
"""


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def link(root: str, path: str, text: str, **query: object) -> str:
    params = {k: str(v) for k, v in query.items() if v is not None and v != ""}
    href = root + path + ("?" + urlencode(params) if params else "")
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def nav(root: str, user: str | None, csrf: str | None) -> str:
    items = [
        link(root, "/", "Dashboard"),
        link(root, "/accounts", "Accounts"),
        link(root, "/usage", "Usage per route"),
    ]
    if user is not None:
        who = f'<span class="who">{esc(user)}</span>'
        if csrf is not None:  # a session: it can be ended
            who += form(root + "/logout", csrf, '<button id="logout">Sign out</button>')
        items.append(who)
    return "<nav>" + "".join(items) + "</nav>"


def form(action: str, csrf: str | None, body: str, *, form_id: str = "") -> str:
    token = f'<input type="hidden" name="csrf" value="{esc(csrf)}">' if csrf else ""
    ident = f' id="{esc(form_id)}"' if form_id else ""
    return f'<form method="post" action="{esc(action)}"{ident}>{token}{body}</form>'


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Sequence[int] = ()
) -> str:
    """A table of already-escaped cells; ``numeric`` columns are right-aligned."""
    head = "".join(
        f'<th class="n">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="note">Nothing to show.</td></tr>'
    return f'<table class="t"><tr>{head}</tr>{body}</table>'


def page(title: str, body: str, *, top: str = "") -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body>{top}"
        f'<div class="page">{body}</div></body></html>'
    )


def html_page(
    content: str, status: int = 200, headers: dict[str, str] | None = None
) -> HTMLResponse:
    base = {"Cache-Control": "no-store", "Content-Security-Policy": CSP, "X-Frame-Options": "DENY"}
    return HTMLResponse(content, status_code=status, headers={**base, **(headers or {})})
