"""The usage report: exact numbers on both backends, and the same numbers in every view."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from test_report_helpers import ADMIN, EXPECTED, dashboard_numbers, run_session

from credit_middleware import Identity, Ledger, Provisioner, TrialPolicy
from credit_middleware.admin import render_dashboard
from credit_middleware.ops.report import build_report, render_text

pytestmark = pytest.mark.anyio

_VOLATILE = ("since", "until", "generated_at", "provisioned_per_day")


def _stable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in _VOLATILE}


def _shown(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-k="([^"]+)">([^<]*)<', html))


async def test_report_metrics_admin_and_dashboard_agree(ledger: Ledger, clock: Any) -> None:
    session = await run_session(ledger, clock)
    report = await build_report(ledger)
    data = report.to_json()

    assert _stable(data) == EXPECTED
    day = datetime.fromtimestamp(1_800_000_000, tz=timezone.utc).date().isoformat()
    assert data["provisioned_per_day"] == {
        day: {"litellm": 1, "request": 1, "signup": 1, "webhook": 1}
    }

    # The metrics saw the same provisioning, including the failed signup the ledger cannot.
    value = session.observer.registry.get_sample_value
    for layer in ("signup", "request", "litellm", "webhook"):
        assert value("credit_provisioning_total", {"layer": layer, "outcome": "created"}) == 1
    assert value("credit_provisioning_total", {"layer": "signup", "outcome": "failed"}) == 1
    assert value("credit_ledger_operations_total", {"kind": "debit", "outcome": "ok"}) == 8
    assert (
        value("credit_ledger_operations_total", {"kind": "debit", "outcome": "insufficient"}) == 1
    )
    for status, reason in (("402", "insufficient_credits"), ("429", "rate_limited"),
                           ("401", "unauthenticated")):  # fmt: skip
        assert value("credit_refusals_total", {"status": status, "reason": reason}) == 1
    assert value("credit_middleware_overhead_seconds_count", {}) == 8

    # ... and /metrics serves them.
    text = (await session.middleware_client.get("/metrics")).text
    assert 'credit_provisioning_total{layer="signup",outcome="failed"} 1.0' in text
    assert "carol" not in text
    assert "alice" not in text

    # The admin API's report is the same JSON, to the byte (the clock does not move).
    r = await session.middleware_client.get("/admin/api/report", headers=ADMIN)
    assert r.status_code == 200
    assert r.json() == data

    # The dashboard shows the same numbers and lists the three refusals.
    r = await session.middleware_client.get("/admin/", headers=ADMIN)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    shown = _shown(r.text)
    expected = dashboard_numbers(data)
    assert {k: shown[k] for k in expected} == expected
    assert shown["refusals.count"] == "3"
    for reason in ("insufficient_credits", "rate_limited", "unauthenticated"):
        assert reason in r.text
    assert render_dashboard(data, []).count("<svg") == 3  # funnel, daily, cohorts

    # The refund and the sale happened once each (same key twice), and are in the ledger.
    entries = await ledger.history("carol", limit=100) + await ledger.history("alice", limit=100)
    assert [e.kind for e in entries].count("refund") == 1
    assert len([e for e in entries if e.key == "admin:order-1"]) == 1
    await session.middleware_client.aclose()


async def test_text_rendering_shows_the_numbers(ledger: Ledger, clock: Any) -> None:
    session = await run_session(ledger, clock)
    text = render_text(await build_report(ledger))
    assert "Accounts provisioned: 4 (trials denied: 0)" in text
    assert re.search(r"consumed\s+2\.25\n", text)
    assert re.search(r"expired\s+1\.75\n", text)
    assert re.search(r"one\s+2\s+1\.25\s+0\.5000\s+0\.0000", text)
    await session.middleware_client.aclose()


async def test_an_empty_ledger_reports_zeros(ledger: Ledger) -> None:
    data = (await build_report(ledger)).to_json()
    assert data["accounts"] == 0
    assert data["active_accounts"] == 0
    assert data["credits"]["consumed"] == "0"
    assert data["cohorts"] == []
    assert data["top_consumers"] == []
    assert data["fallback_total"] == 0
    assert "Accounts provisioned: 0" in render_text(await build_report(ledger))


async def test_the_period_selects_accounts_and_entries(ledger: Ledger, clock: Any) -> None:
    prov = Provisioner(ledger, TrialPolicy(amount=Decimal(2)))
    start = datetime.fromtimestamp(clock.now, tz=timezone.utc)
    await prov.ensure_account("early", layer="signup")
    await ledger.debit("early", "0.5")
    clock.advance(2 * 86_400)
    await prov.ensure_account("late", layer="request")
    await ledger.debit("early", "0.25")
    await ledger.debit("late", "1")
    middle = start + timedelta(days=1)

    first = (await build_report(ledger, since=start, until=middle)).to_json()
    assert first["accounts"] == 1
    assert first["provisioned"] == {"signup": 1}
    assert first["credits"]["consumed"] == "0.5"
    assert first["credits"]["granted"] == "2"
    assert first["top_consumers"] == [{"account_id": "early", "credits_used": "0.5"}]

    second = (await build_report(ledger, since=middle)).to_json()
    assert second["accounts"] == 1
    assert second["fallback"] == {"request": 1}
    assert second["credits"]["consumed"] == "1.25"
    assert second["active_accounts"] == 2
    # cohorts count the accounts created in the period, with their usage in it
    assert [(c["accounts"], c["credits_used"]) for c in second["cohorts"]] == [(1, "1")]

    whole = (await build_report(ledger)).to_json()
    assert whole["credits"]["consumed"] == "1.75"
    assert len(whole["consumed_per_day"]) == 2


async def test_exhausted_means_spent_not_expired(ledger: Ledger, clock: Any) -> None:
    prov = Provisioner(ledger, TrialPolicy(amount=Decimal(1), valid_for=timedelta(days=1)))
    for aid in ("spender", "idler", "buyer"):
        await prov.ensure_account(aid, layer="signup")
    await ledger.debit("spender", "1")
    await ledger.debit("idler", "0.5")
    await ledger.grant("buyer", "3", source="purchase", key="order")
    clock.advance(2 * 86_400)
    await ledger.sweep()
    data = (await build_report(ledger)).to_json()
    (cohort,) = data["cohorts"]
    assert cohort["cohort"] == "(none)"
    assert cohort["accounts"] == 3
    assert cohort["exhausted"] == 1
    assert cohort["purchased"] == 1
    assert data["credits"]["expired"] == "1.5"  # idler's 0.5 and buyer's trial; not the purchase


async def test_denied_trials_and_adjustments_are_counted(ledger: Ledger) -> None:
    prov = Provisioner(ledger, TrialPolicy(require_verified_email=True))
    await prov.ensure_account("unverified", layer="request")
    await ledger.adjust("unverified", "2", key="fix-1", reason="goodwill")
    await ledger.adjust("unverified", "-0.5", key="fix-2", reason="correction")
    data = (await build_report(ledger)).to_json()
    assert data["accounts"] == 1
    assert data["trials"] == {}
    assert data["trials_denied"] == 1
    assert data["credits"]["granted_by_source"] == {"admin": "2"}
    assert data["credits"]["adjusted_out"] == "0.5"


async def test_bad_arguments_are_refused(ledger: Ledger) -> None:
    now = datetime.now(timezone.utc)
    with pytest.raises(ValueError, match="before"):
        await build_report(ledger, since=now, until=now)
    with pytest.raises(ValueError, match="timezone"):
        await build_report(ledger, since=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="top"):
        await build_report(ledger, top=0)


async def test_accounts_an_operator_opened_are_neither_denied_trials_nor_conversions(
    ledger_url: str, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """``grant --create`` opens an account the trial policy never saw: it is not a denied
    trial, and what it bought is not its cohort's conversion. A real refusal still counts."""
    from credit_middleware.ops.cli import main

    prov = Provisioner(ledger, TrialPolicy(require_verified_email=True))
    await prov.ensure_account("refused", layer="request")  # unverified: trial denied
    await prov.ensure_account(Identity("trialist", email_verified=True), layer="signup")
    args = ["grant", "walk-in", "20", "--create", "--source", "purchase", "--key", "order-1"]
    assert await asyncio.to_thread(main, [*args, "--database-url", ledger_url]) == 0
    capsys.readouterr()

    data = (await build_report(ledger)).to_json()
    assert data["accounts"] == 3
    assert data["trials_denied"] == 1
    (cohort,) = data["cohorts"]
    assert (cohort["accounts"], cohort["trials"], cohort["purchased"]) == (2, 1, 0)
    assert cohort["purchased_share"] == "0.0000"
    assert "(trials denied: 1)" in render_text(await build_report(ledger))
