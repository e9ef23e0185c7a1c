"""What the usage report needs to know of each account, kept per account for the rollups.

An account's facts decide which row of ``credit_rollup_accounts`` it counts in (its creation
day, provisioning layer, cohort, and whether the trial policy decided on it) and what it adds
there (a trial, a refused trial, a trial spent to zero, a purchase, credits used). When an
account changes (a new account, or one with new entries), its facts are derived again from
the account row, its trial grant and its purchases (a few index lookups), and the aggregate
row loses the old facts' contribution and gains the new one: the aggregates always equal what
the report's full queries would count, account by account, without reading every account.

Two facts only grow and are carried from entry to entry: whether an ``expire`` entry ever
touched the trial grant, and what the account consumed (debits and captures).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ._bulk import in_set, set_arg, upsert
from ._executor import Conn, Dialect
from ._sums import join, split

__all__ = ["NO_COHORT", "Facts", "apply_changes", "derive", "load_state"]

NO_COHORT = "(none)"
DAY_US = 86_400 * 1_000_000

_FACT_COLUMNS = (
    ("account_id", "text"),
    ("created_at", "bigint"),
    ("day", "bigint"),
    ("layer", "text"),
    ("cohort", "text"),
    ("decided", "smallint"),
    ("trial", "smallint"),
    ("denied", "smallint"),
    ("exhausted", "smallint"),
    ("purchased", "smallint"),
    ("trial_expired", "smallint"),
    ("consumer", "smallint"),
    ("used_hi", "bigint"),
    ("used_lo", "bigint"),
)
_AGG_COLUMNS = (
    ("day", "bigint"),
    ("layer", "text"),
    ("cohort", "text"),
    ("decided", "smallint"),
    ("n", "bigint"),
    ("trials", "bigint"),
    ("denied", "bigint"),
    ("exhausted", "bigint"),
    ("purchased", "bigint"),
    ("consumers", "bigint"),
    ("used_hi", "bigint"),
    ("used_lo", "bigint"),
)
_AGG_KEY = ("day", "layer", "cohort", "decided")
_AGG_VALUES = tuple(c for c, _ in _AGG_COLUMNS if c not in _AGG_KEY)

AggKey = tuple[int, str, str, int]


@dataclass(frozen=True, slots=True)
class Facts:
    account_id: str
    created_at: int
    layer: str
    cohort: str
    decided: bool
    trial: bool
    denied: bool
    exhausted: bool
    purchased: bool
    trial_expired: bool = False
    consumer: bool = False
    used: int = 0

    @property
    def day(self) -> int:
        return self.created_at // DAY_US

    def key(self) -> AggKey:
        return (self.day, self.layer, self.cohort, int(self.decided))

    def counts(self) -> tuple[int, ...]:
        """What the account adds to its aggregate row, in ``_AGG_VALUES`` order."""
        return (
            1,
            int(self.trial),
            int(self.denied),
            int(self.exhausted),
            int(self.purchased),
            int(self.consumer),
            *split(self.used),
        )

    def row(self) -> tuple[Any, ...]:
        return (
            self.account_id,
            self.created_at,
            self.day,
            self.layer,
            self.cohort,
            int(self.decided),
            int(self.trial),
            int(self.denied),
            int(self.exhausted),
            int(self.purchased),
            int(self.trial_expired),
            int(self.consumer),
            *split(self.used),
        )

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> Facts:
        return cls(
            r["account_id"],
            int(r["created_at"]),
            r["layer"],
            r["cohort"],
            bool(r["decided"]),
            bool(r["trial"]),
            bool(r["denied"]),
            bool(r["exhausted"]),
            bool(r["purchased"]),
            bool(r["trial_expired"]),
            bool(r["consumer"]),
            join(r["used_hi"], r["used_lo"]),
        )


def _json_text(dialect: Dialect, value: Any) -> str | None:
    """A metadata value as the report's SQL reads it (PostgreSQL ``->>``, SQLite
    ``json_extract``), so that both ways of counting name a layer alike."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        if dialect == "postgresql":
            return "true" if value else "false"
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return str(value)
    separators = (", ", ": ") if dialect == "postgresql" else (",", ":")
    return json.dumps(value, separators=separators)


def _metadata(raw: Any) -> dict[str, Any]:
    try:
        loaded = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


@dataclass(slots=True)
class State:
    """The rows an account's facts are derived from, for a set of accounts."""

    accounts: dict[str, Mapping[str, Any]]
    trials: dict[str, Mapping[str, Any]]
    purchasers: set[str]
    old: dict[str, Facts]


async def load_state(conn: Conn, ids: Sequence[str]) -> State:
    where, arg = in_set(conn.dialect, "account_id"), set_arg(conn.dialect, ids)
    accounts = await conn.fetch(
        f"SELECT account_id, cohort, metadata, created_at FROM credit_accounts WHERE {where}",
        arg,
    )
    trials = await conn.fetch(
        "SELECT account_id, grant_id, remaining, layer FROM credit_grants"
        f" WHERE source = 'trial' AND {where}",
        arg,
    )
    purchasers = await conn.fetch(
        f"SELECT DISTINCT account_id FROM credit_grants WHERE source = 'purchase' AND {where}",
        arg,
    )
    old = await conn.fetch(f"SELECT * FROM credit_rollup_facts WHERE {where}", arg)
    return State(
        {r["account_id"]: r for r in accounts},
        {r["account_id"]: r for r in trials},
        {r["account_id"] for r in purchasers},
        {r["account_id"]: Facts.from_row(r) for r in old},
    )


def derive(
    dialect: Dialect,
    state: State,
    account_id: str,
    expired_grants: Iterable[int] = (),
    consumed: int | None = None,
) -> Facts:
    """The account's facts now: from its rows in ``state``, the grants ``expire`` entries of
    this batch touched, and what its consuming entries of this batch used (None: none)."""
    account = state.accounts[account_id]
    trial = state.trials.get(account_id)
    meta = _metadata(account["metadata"])
    denied_meta = meta.get("trial_denied") is not None
    layer = _json_text(dialect, meta.get("provisioned_by"))
    if layer is None and trial is not None:
        layer = trial["layer"]
    old = state.old.get(account_id)
    expired = old is not None and old.trial_expired
    if trial is not None and int(trial["grant_id"]) in set(expired_grants):
        expired = True
    has_trial = trial is not None
    facts = Facts(
        account_id=account_id,
        created_at=int(account["created_at"]),
        layer=layer or "unknown",
        cohort=account["cohort"] if account["cohort"] is not None else NO_COHORT,
        decided=has_trial or denied_meta,
        trial=has_trial,
        denied=not has_trial and denied_meta,
        exhausted=trial is not None and int(trial["remaining"]) == 0 and not expired,
        purchased=account_id in state.purchasers,
        trial_expired=expired,
        consumer=old is not None and old.consumer,
        used=old.used if old is not None else 0,
    )
    if consumed is not None:
        facts = replace(facts, consumer=True, used=facts.used + consumed)
    return facts


async def apply_changes(conn: Conn, old: Mapping[str, Facts], new: Sequence[Facts]) -> None:
    """Store ``new`` facts and move each account's contribution in the aggregates from its
    ``old`` facts (if any) to the new ones."""
    deltas: dict[AggKey, list[int]] = {}

    def move(key: AggKey, counts: tuple[int, ...], sign: int) -> None:
        cell = deltas.setdefault(key, [0] * len(_AGG_VALUES))
        for i, v in enumerate(counts):
            cell[i] += sign * v

    for facts in new:
        before = old.get(facts.account_id)
        if before == facts:
            continue
        if before is not None:
            move(before.key(), before.counts(), -1)
        move(facts.key(), facts.counts(), 1)
    await upsert(
        conn,
        "credit_rollup_facts",
        _FACT_COLUMNS,
        ("account_id",),
        [f.row() for f in new if old.get(f.account_id) != f],
    )
    await upsert(
        conn,
        "credit_rollup_accounts",
        _AGG_COLUMNS,
        _AGG_KEY,
        [(*key, *values) for key, values in deltas.items() if any(values)],
        add=_AGG_VALUES,
    )
