"""The usage report: where trial credits went and which trial converts.

``build_report`` asks the ledger for the period's figures and returns a :class:`Report`;
``Report.to_json()`` is what ``report --json``, the admin API and the dashboard show, with
money as decimal strings of credits. For whole UTC days (the dashboard's and the CLI's dates)
the figures come from the ledger's rollups, brought up to date first: a few rows per day,
whatever the ledger's size (``ledger/_rollups.py``); a period that starts or ends within a
day is counted from its entries. Both ways give the same figures, exactly.

What the ledger can and cannot say about provisioning: an account records the layer that created
it (``metadata.provisioned_by``, and the trial grant's ``layer``). A *failed* provisioning attempt
writes nothing (that is the point of failing safely), so the ledger cannot tell a signup that
failed from a user who never went through signup. ``fallback`` therefore counts the accounts
that the eager layers (``signup``, ``webhook``) did not reach and a later one (``request``,
``litellm``) provisioned: the failures the system recovered from, plus users created outside
signup. The failed attempts themselves are counted by the metrics
(``credit_provisioning_total{outcome="failed"}``).

A trial counts as *denied* only where the policy refused it (the account records why, in
``metadata.trial_denied``) and no trial was granted later; an account an operator opened
(``grant --create``, the admin API) was never offered a trial and is not a refusal. The cohort
table likewise counts only accounts the trial policy decided on, so credits an operator sold to
such an account are not a trial's conversion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..ledger import Balance, Ledger
from ..ledger.models import dt_to_us
from ..money import from_micros

__all__ = ["CohortStats", "Report", "balance_json", "build_report", "render_text"]

EAGER_LAYERS = ("signup", "webhook")
FALLBACK_LAYERS = ("request", "litellm")
_MIN_US, _MAX_US = -(2**62), 2**62


def _money(micros: int) -> str:
    return str(from_micros(micros))


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.4f}" if whole else "0"


@dataclass(frozen=True, slots=True)
class CohortStats:
    """One trial cohort: how many accounts, what they used, how many spent the whole trial and
    how many bought credits."""

    cohort: str
    accounts: int
    trials: int
    used_micros: int
    exhausted: int
    purchased: int

    def to_json(self) -> dict[str, Any]:
        return {
            "cohort": self.cohort,
            "accounts": self.accounts,
            "trials": self.trials,
            "credits_used": _money(self.used_micros),
            "exhausted": self.exhausted,
            "purchased": self.purchased,
            "exhausted_share": _share(self.exhausted, self.accounts),
            "purchased_share": _share(self.purchased, self.accounts),
        }


@dataclass(frozen=True, slots=True)
class Report:
    """Usage over ``[since, until)``; money in µc, ``to_json()`` turns it into credits."""

    since: datetime | None
    until: datetime | None
    generated_at: datetime
    provisioned: dict[str, int] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)
    #: accounts whose trial the policy refused (and that got none later)
    trials_denied: int = 0
    provisioned_per_day: dict[str, dict[str, int]] = field(default_factory=dict)
    granted_micros: dict[str, int] = field(default_factory=dict)
    consumed_micros: int = 0
    expired_micros: int = 0
    refunded_micros: int = 0
    adjusted_out_micros: int = 0
    consumed_per_day: dict[str, int] = field(default_factory=dict)
    active_accounts: int = 0
    top_consumers: list[tuple[str, int]] = field(default_factory=list)
    cohorts: list[CohortStats] = field(default_factory=list)

    @property
    def accounts(self) -> int:
        return sum(self.provisioned.values())

    @property
    def fallback(self) -> dict[str, int]:
        """Accounts the eager layers did not reach and a later layer provisioned."""
        return {k: v for k, v in self.provisioned.items() if k in FALLBACK_LAYERS}

    def to_json(self) -> dict[str, Any]:
        granted = {k: v for k, v in self.granted_micros.items() if k != "refund"}
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "generated_at": self.generated_at.isoformat(),
            "accounts": self.accounts,
            "provisioned": dict(sorted(self.provisioned.items())),
            "trials": dict(sorted(self.trials.items())),
            "trials_denied": self.trials_denied,
            "fallback": dict(sorted(self.fallback.items())),
            "fallback_total": sum(self.fallback.values()),
            "provisioned_per_day": self.provisioned_per_day,
            "credits": {
                "granted": _money(sum(granted.values())),
                "granted_by_source": {k: _money(v) for k, v in sorted(granted.items())},
                "consumed": _money(self.consumed_micros),
                "expired": _money(self.expired_micros),
                "refunded": _money(self.refunded_micros),
                "adjusted_out": _money(self.adjusted_out_micros),
            },
            "consumed_per_day": {d: _money(v) for d, v in self.consumed_per_day.items()},
            "active_accounts": self.active_accounts,
            "top_consumers": [
                {"account_id": a, "credits_used": _money(v)} for a, v in self.top_consumers
            ],
            "cohorts": [c.to_json() for c in self.cohorts],
        }

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False)


def _day(day: Any) -> str:
    return datetime.fromtimestamp(int(day) * 86_400, tz=timezone.utc).date().isoformat()


async def build_report(
    ledger: Ledger,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    top: int = 10,
) -> Report:
    """Usage of the ledger between ``since`` (inclusive) and ``until`` (exclusive).

    Accounts and cohorts count the accounts *created* in the period; credits count the
    entries and grants *written* in it. Datetimes must be timezone-aware. Midnights UTC (or
    no bounds) are read from the rollups: O(days), plus the accounts active in the period
    when it is bounded; other bounds count the period's entries.
    """
    if not isinstance(top, int) or not 0 < top <= 1000:
        raise ValueError("top must be between 1 and 1000")
    lo = dt_to_us(since) if since is not None else _MIN_US
    hi = dt_to_us(until) if until is not None else _MAX_US
    if lo >= hi:
        raise ValueError("since must be before until")
    rows = await ledger.report_rows(lo, hi, top)
    accounts, entries, usage, cohorts = rows.accounts, rows.entries, rows.usage, rows.cohorts

    provisioned: dict[str, int] = {}
    trials: dict[str, int] = {}
    denied_total = 0
    per_day: dict[str, dict[str, int]] = {}
    for r in sorted(accounts, key=lambda r: (int(r["day"]), str(r["layer"]))):
        layer = str(r["layer"])
        provisioned[layer] = provisioned.get(layer, 0) + int(r["n"])
        denied_total += int(r["denied"] or 0)
        if int(r["trials"]):
            trials[layer] = trials.get(layer, 0) + int(r["trials"])
        day = per_day.setdefault(_day(r["day"]), {})
        day[layer] = day.get(layer, 0) + int(r["n"])

    totals: dict[str, int] = {}
    adjusted_out = 0
    consumed_per_day: dict[str, int] = {}
    for r in sorted(entries, key=lambda r: int(r["day"])):
        totals[r["kind"]] = totals.get(r["kind"], 0) + int(r["s"])
        if r["kind"] == "adjust":
            adjusted_out += int(r["out_s"])
        if r["kind"] in ("debit", "capture"):
            d = _day(r["day"])
            consumed_per_day[d] = consumed_per_day.get(d, 0) + int(r["s"])

    used_by_cohort = {str(r["name"]): int(r["value"]) for r in usage if r["part"] == "cohort"}
    return Report(
        since=since,
        until=until,
        generated_at=datetime.fromtimestamp(ledger.now_us() / 1e6, tz=timezone.utc),
        provisioned=provisioned,
        trials=trials,
        trials_denied=denied_total,
        provisioned_per_day=per_day,
        granted_micros={str(r["source"]): int(r["s"]) for r in rows.granted},
        consumed_micros=totals.get("debit", 0) + totals.get("capture", 0),
        expired_micros=totals.get("expire", 0),
        refunded_micros=totals.get("refund", 0),
        adjusted_out_micros=adjusted_out,
        consumed_per_day=consumed_per_day,
        active_accounts=sum(int(r["value"]) for r in usage if r["part"] == "active"),
        top_consumers=sorted(
            ((str(r["name"]), int(r["value"])) for r in usage if r["part"] == "top"),
            key=lambda t: (-t[1], t[0]),
        ),
        cohorts=[
            CohortStats(
                str(r["cohort"]),
                int(r["accounts"]),
                int(r["trials"]),
                used_by_cohort.get(str(r["cohort"]), 0),
                int(r["exhausted"] or 0),
                int(r["purchased"] or 0),
            )
            for r in cohorts
        ],
    )


def render_text(report: Report) -> str:
    """The report as a plain-text page for a terminal (``credit-middleware report``)."""
    data = report.to_json()
    period = f"{data['since'] or 'the beginning'} to {data['until'] or 'now'}"
    out = [f"Usage report, {period}", ""]
    out.append(f"Accounts provisioned: {data['accounts']} (trials denied: {data['trials_denied']})")
    for layer, n in data["provisioned"].items():
        out.append(f"  {layer:<10} {n:>8}  trials {data['trials'].get(layer, 0)}")
    out.append(f"Reached only by a fallback layer: {data['fallback_total']}")
    credits = data["credits"]
    out.append("")
    out.append("Credits")
    for name in ("granted", "consumed", "expired", "refunded", "adjusted_out"):
        out.append(f"  {name:<13} {credits[name]:>16}")
    for source, amount in credits["granted_by_source"].items():
        out.append(f"    granted as {source:<10} {amount:>12}")
    out.append(f"Active accounts: {data['active_accounts']}")
    if data["consumed_per_day"]:
        out.append("")
        out.append("Consumed per day")
        for day, amount in data["consumed_per_day"].items():
            out.append(f"  {day}  {amount:>16}")
    if data["top_consumers"]:
        out.append("")
        out.append("Top consumers")
        for row in data["top_consumers"]:
            out.append(f"  {row['credits_used']:>16}  {row['account_id']}")
    if data["cohorts"]:
        out.append("")
        out.append(f"  {'cohort':<12} {'accounts':>8} {'used':>14} {'exhausted':>10} {'bought':>8}")
        for c in data["cohorts"]:
            out.append(
                f"  {c['cohort']:<12} {c['accounts']:>8} {c['credits_used']:>14}"
                f" {c['exhausted_share']:>10} {c['purchased_share']:>8}"
            )
    return "\n".join(out) + "\n"


def balance_json(bal: Balance, *, priority: bool = False) -> dict[str, Any]:
    """An account's balance and its grants as JSON (amounts as exact decimal strings), as the
    CLI and the admin API show it (the CLI with each grant's priority)."""
    grants = []
    for g in bal.grants:
        grant: dict[str, Any] = {
            "grant_id": g.grant_id,
            "source": g.source,
            "amount": str(g.amount),
            "remaining": str(g.remaining),
        }
        if priority:
            grant["priority"] = g.priority
        grant["expires_at"] = g.expires_at.isoformat() if g.expires_at else None
        grants.append(grant)
    return {
        "account_id": bal.account_id,
        "tier": bal.tier,
        "spendable": str(bal.spendable),
        "held": str(bal.held),
        "available": str(bal.available),
        "grants": grants,
    }
