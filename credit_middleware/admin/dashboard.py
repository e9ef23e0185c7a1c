"""The usage dashboard: one static HTML page with inline SVG charts, built from the report.

The page needs nothing from anywhere (no script, no CDN, no font); every number it shows is a
value of ``build_report(...).to_json()`` and carries a ``data-k`` attribute naming it (for
example ``data-k="credits.consumed"``), and the whole report is embedded as JSON, so what a
person reads and what ``report --json`` prints cannot drift apart.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal
from html import escape
from typing import Any

from ._svg import PALETTE, hbars, vbars

__all__ = ["render_dashboard"]

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f8fafc;color:#0f172a}
header{background:#0f172a;color:#f8fafc;padding:14px 24px}
header h1{margin:0;font-size:20px} header p{margin:4px 0 0;color:#cbd5e1}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(600px,1fr));gap:16px;padding:16px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px 16px}
h2{font-size:16px;margin:0 0 8px} .tiles{display:flex;flex-wrap:wrap;gap:10px;padding:16px}
.tile{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:8px 14px;min-width:110px}
.tile b{display:block;font-size:22px} .tile span.l{color:#475569;font-size:12px}
table{border-collapse:collapse;width:100%;margin-top:8px;font-size:13px}
td,th{border-bottom:1px solid #e2e8f0;padding:3px 6px;text-align:right}
td:first-child,th:first-child{text-align:left} .empty{color:#64748b}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
form{padding:0 16px} input{font:inherit}
"""


_NAV = """
nav{background:#1e293b;padding:8px 24px;display:flex;gap:18px;align-items:center}
nav a{color:#f8fafc;text-decoration:none} nav .who{margin-left:auto;color:#cbd5e1}
nav form{display:inline;margin:0;padding:0}
"""


def _num(key: str, value: object) -> str:
    return f'<span data-k="{escape(key)}">{escape(str(value))}</span>'


def _row(*cells: str) -> str:
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _f(value: str) -> float:
    return float(Decimal(value))


def _legend(*items: tuple[str, str]) -> str:
    spans = "".join(f'<span style="background:{c}"></span>{escape(t)}' for t, c in items)
    return f'<div class="legend">{spans}</div>'


def _tiles(data: dict[str, Any]) -> str:
    credits = data["credits"]
    tiles = [
        ("accounts", data["accounts"], "accounts provisioned"),
        ("active_accounts", data["active_accounts"], "active accounts"),
        ("fallback_total", data["fallback_total"], "reached by a fallback layer"),
        ("credits.granted", credits["granted"], "credits granted"),
        ("credits.consumed", credits["consumed"], "credits consumed"),
        ("credits.expired", credits["expired"], "credits expired"),
        ("credits.refunded", credits["refunded"], "credits refunded"),
        ("credits.adjusted_out", credits["adjusted_out"], "credits adjusted out"),
    ]
    body = "".join(
        f'<div class="tile"><b>{_num(k, v)}</b><span class="l">{escape(label)}</span></div>'
        for k, v, label in tiles
    )
    return f'<div class="tiles">{body}</div>'


def _funnel(data: dict[str, Any]) -> str:
    layers = sorted(data["provisioned"], key=lambda k: -data["provisioned"][k])
    rows = [
        (
            layer,
            [
                (data["provisioned"][layer], str(data["provisioned"][layer]), PALETTE[0]),
                (data["trials"].get(layer, 0), str(data["trials"].get(layer, 0)), PALETTE[1]),
            ],
        )
        for layer in layers
    ]
    table = "".join(
        _row(
            escape(layer),
            _num("provisioned." + layer, data["provisioned"][layer]),
            _num("trials." + layer, data["trials"].get(layer, 0)),
        )
        for layer in layers
    )
    return (
        '<section id="funnel"><h2>Provisioning by layer</h2>'
        + _legend(("accounts", PALETTE[0]), ("trial granted", PALETTE[1]))
        + hbars(rows)
        + f"<p>Trials denied: {_num('trials_denied', data['trials_denied'])}."
        f" Reached only by a fallback layer (request, litellm):"
        f" {_num('fallback_total', data['fallback_total'])}.</p>"
        f"<table><tr><th>layer</th><th>accounts</th><th>trials</th></tr>{table}</table></section>"
    )


def _daily(data: dict[str, Any]) -> str:
    days = data["consumed_per_day"]
    rows = [(day, _f(amount), amount) for day, amount in days.items()]
    table = "".join(
        f"<tr><td>{escape(d)}</td><td>{_num('consumed_per_day.' + d, a)}</td></tr>"
        for d, a in days.items()
    )
    return (
        '<section id="daily"><h2>Credits consumed per day</h2>'
        + vbars(rows)
        + f"<table><tr><th>day (UTC)</th><th>credits</th></tr>{table}</table></section>"
    )


def _cohorts(data: dict[str, Any]) -> str:
    cohorts = data["cohorts"]
    rows = [
        (
            c["cohort"],
            [
                (_f(c["exhausted_share"]), f"{_f(c['exhausted_share']):.0%} exhausted", PALETTE[2]),
                (_f(c["purchased_share"]), f"{_f(c['purchased_share']):.0%} bought", PALETTE[1]),
            ],
        )
        for c in cohorts
    ]
    cells = ("accounts", "credits_used", "exhausted_share", "purchased_share")
    table = "".join(
        f"<tr><td>{escape(c['cohort'])}</td>"
        + "".join(f"<td>{_num('cohorts.' + c['cohort'] + '.' + k, c[k])}</td>" for k in cells)
        + "</tr>"
        for c in cohorts
    )
    return (
        '<section id="cohorts"><h2>Trial cohorts</h2>'
        + _legend(("exhausted the trial", PALETTE[2]), ("bought credits", PALETTE[1]))
        + hbars(rows)
        + "<table><tr><th>cohort</th><th>accounts</th><th>credits used</th>"
        f"<th>exhausted</th><th>bought</th></tr>{table}</table></section>"
    )


def _refusals(refusals: list[dict[str, Any]]) -> str:
    counts = Counter(f"{r['status']} {r['reason']}" for r in refusals)
    colours = {"401": PALETTE[4], "402": PALETTE[2], "429": PALETTE[5], "503": PALETTE[3]}
    rows = [
        (label, [(n, str(n), colours.get(label[:3], PALETTE[0]))])
        for label, n in counts.most_common()
    ]
    recent = "".join(
        "<tr><td>"
        + escape(datetime.fromtimestamp(r["at"], tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))
        + f"</td><td>{int(r['status'])}</td><td>{escape(str(r['reason']))}</td></tr>"
        for r in refusals[:20]
    )
    return (
        '<section id="refusals"><h2>Recent refusals</h2>'
        + f"<p>{_num('refusals.count', len(refusals))} kept in memory (newest first).</p>"
        + hbars(rows, label_w=200)
        + f"<table><tr><th>time (UTC)</th><th>status</th><th>reason</th></tr>{recent}</table>"
        "</section>"
    )


def _top(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{escape(t['account_id'])}</td><td>{escape(t['credits_used'])}</td></tr>"
        for t in data["top_consumers"]
    )
    return (
        '<section id="top"><h2>Top consumers</h2>'
        f"<table><tr><th>account</th><th>credits used</th></tr>{rows}</table></section>"
    )


def render_dashboard(
    data: dict[str, Any],
    refusals: list[dict[str, Any]],
    *,
    title: str = "Credit usage",
    top: str = "",
) -> str:
    """The page for one report (``Report.to_json()``) and the recent refusals; ``top`` is
    the admin app's navigation bar."""
    period = f"{data['since'] or 'the beginning'} to {data['until'] or 'now'}"
    embedded = json.dumps(data, sort_keys=True).replace("<", "\\u003c")
    since = escape((data["since"] or "")[:10])
    until = escape((data["until"] or "")[:10])
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}{_NAV}</style></head><body>{top}"
        f"<header><h1>{escape(title)}</h1><p>{escape(period)}, generated"
        f" {escape(data['generated_at'])}</p></header>"
        '<form method="get">From <input type="date" name="since" value="' + since + '"> to'
        ' <input type="date" name="until" value="'
        + until
        + '"> <button>Show</button></form>'
        + _tiles(data)
        + "<main>"
        + _funnel(data)
        + _daily(data)
        + _cohorts(data)
        + _refusals(refusals)
        + _top(data)
        + "</main>"
        f'<script type="application/json" id="report-data">{embedded}</script>'
        "</body></html>"
    )
