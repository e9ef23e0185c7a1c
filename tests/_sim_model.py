"""The model the simulation (``_sim``) checks a schedule against: what the charge contract
promises each logical call, given what its attempts were told and what the ledger kept.

Per call (a keyed one as a whole, an unkeyed one attempt by attempt): a served call is charged
exactly once, at the price its answers said (``Credit-Cost``; a hold captured late may record a
shortfall instead); a 503 charged nothing; an unserved answer kept nothing; a call whose answer
was lost (a crash, a client gone) kept at most one charge; a replay ran no handler; a 500 is
the app's own; one standing charge per key; a live call is not served twice nor its handler
run twice at once; every call ends with a definitive answer. What faults legitimately undo is
allowed for, and only that: a clock jump longer than a lease (a paused process whose key a
retry took over), a lost renewal, a key forgotten after its time, a settlement lost with the
process that held it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from credit_middleware import Ledger
from credit_middleware.ledger.models import Entry

if TYPE_CHECKING:
    from _sim import Attempt, LogicalCall, World

__all__ = ["FIXED", "HOLD", "check"]

FIXED = Decimal("0.5")
HOLD = Decimal("1")


async def check(world: World, ledger: Ledger) -> list[str]:
    """What the schedule broke of the charge contract (empty: nothing)."""
    problems = list(world.unhandled)
    entries: list[Entry] = []
    for aid in sorted({c.account for c in world.calls}):
        if await ledger.get_account(aid) is not None:
            entries += await ledger.history(aid, limit=1000)
    kept, shortfall = _kept(entries), _shortfall(entries)
    charged_keys = {e.key for e in entries if e.key is not None}
    relaxed = world.jumped or bool(world.renewal_faulted)
    forgot = world.forgot
    for call in world.calls:
        name = f"call{call.index} ({call.route}, key={call.key})"
        if not call.answered:
            problems.append(f"{name}: never got a definitive answer")
        groups = [call.attempts] if call.key is not None else [[a] for a in call.attempts]
        for group in groups:
            problems += _check_group(
                name, call, group, kept, shortfall, charged_keys, relaxed, forgot
            )
    return problems


def _shortfall(entries: list[Entry]) -> dict[str, int]:
    """µc each charge id's capture asked for but could not bill (recorded in its entry)."""
    holds = {e.hold_id: e.key for e in entries if e.kind == "hold" and e.key is not None}
    out: dict[str, int] = {}
    for e in entries:
        if e.kind in ("capture", "debit") and e.hold_id in holds:
            cid = holds[e.hold_id]
            assert cid is not None
            out[cid] = out.get(cid, 0) + int(e.metadata.get("shortfall_micros", 0))
    return out


def _kept(entries: list[Entry]) -> dict[str, int]:
    """µc each charge id still keeps: its debit, or its hold's capture (or late debit), less
    what was refunded against them."""
    by_id = {e.entry_id: e for e in entries}
    holds = {e.hold_id: e.key for e in entries if e.kind == "hold" and e.key is not None}
    owner: dict[int, str] = {}
    for e in entries:
        if e.kind == "debit" and e.key is not None and e.key.startswith("c_"):
            owner[e.entry_id] = e.key
        elif e.kind in ("capture", "debit") and e.hold_id in holds:
            owner[e.entry_id] = holds[e.hold_id]
    kept: dict[str, int] = {}
    for entry_id, cid in owner.items():
        kept[cid] = kept.get(cid, 0) + by_id[entry_id].amount_micros
    for e in entries:
        if e.kind == "refund" and e.ref_entry_id in owner:
            cid = owner[e.ref_entry_id]
            kept[cid] -= e.amount_micros
    return kept


def _micros(value: str | None) -> int:
    return int(Decimal(value or "0") * 1_000_000)


def _check_group(
    name: str,
    call: LogicalCall,
    group: list[Attempt],
    kept: dict[str, int],
    shortfall: dict[str, int],
    charged_keys: set[str],
    relaxed: bool,
    forgot: bool = False,
) -> list[str]:
    out: list[str] = []
    cids = set().union(*(a.cids for a in group)) | {
        a.headers["credit-charge-id"] for a in group if "credit-charge-id" in a.headers
    }
    standing = {cid: kept[cid] for cid in cids if kept.get(cid, 0) > 0}
    total = sum(kept.get(cid, 0) for cid in cids)
    keyed = call.key is not None
    # a key forgotten after its time is new again: each life of it may have its charge
    if len(standing) > 1 and not (keyed and forgot):
        out.append(f"{name}: {len(standing)} standing charges for one key: {standing}")
    served = [
        a
        for a in group
        if a.outcome == "answered" and a.status is not None and 200 <= a.status < 300
        if not a.replayed
    ]
    lost = [a for a in group if a.outcome in ("crashed", "cancelled") or a.settlement_lost]
    served_ids = {a.headers.get("credit-charge-id") for a in served}
    for a in group:
        if a.outcome != "answered" or a.status is None:
            continue
        if a.status == 503 and not a.settlement_lost:
            # nothing charged for it (for a keyed call, its charge may be the key's, taken
            # over by a retry that was served: then it is that retry's, checked below; and a
            # reversal still to be made when its process died is lost with it)
            own = a.headers.get("credit-charge-id")
            if own and kept.get(own, 0) != 0 and own not in served_ids:
                out.append(f"{a.label}: answered 503 but its charge {own} kept {kept[own]} µc")
        if a.status == 500 and not (a.handler_ran and a.plan_status == 500):
            out.append(f"{a.label}: a 500 the app did not answer")
        if a.replayed and a.handler_ran:
            out.append(f"{a.label}: a replay ran the handler")
    if len(served) > 1 and not relaxed and not lost:
        out.append(f"{name}: served {len(served)} times: {[a.label for a in served]}")
    # the client's word for it: what each served answer said it cost (a key taken from an
    # attempt still running, by a clock jump or a lost renewal, moves its money to the taker:
    # what the first was told no longer holds; a key forgotten after its time starts anew)
    unsure = (relaxed and call.live_takeover) or (keyed and forgot)
    if served:
        if unsure or any(a.settlement_lost for a in group):
            return out + _overlap(name, call, relaxed, lost)
        first = served[0]
        told = sum(_micros(a.headers.get("credit-cost")) for a in served)
        if call.route == "handler":
            told = 0
        # a hold captured late bills at most its amount, the rest recorded as a shortfall
        # (told as asked for when the capture itself had to wait)
        short = sum(shortfall.get(cid, 0) for cid in cids)
        if told not in (total, total + short):
            out.append(f"{name}: served ({first.label}), told it cost {told} µc, kept {total} µc")
        charge = first.headers.get("credit-charge-id")
        if told and charge not in charged_keys:
            out.append(f"{first.label}: Credit-Charge-Id {charge} keys nothing in the ledger")
    elif lost:
        price = _micros(str(FIXED if call.route == "fixed" else max(HOLD, Decimal("1.5"))))
        if total > price or total < 0:
            out.append(f"{name}: answer lost, yet kept {total} µc (more than one charge)")
    elif total != 0:
        states = [(a.label, a.outcome, a.status) for a in group]
        out.append(f"{name}: not served {states}, yet kept {total} µc")
    return out + _overlap(name, call, relaxed, lost)


def _overlap(name: str, call: LogicalCall, relaxed: bool, lost: list[Attempt]) -> list[str]:
    if call.overlap and not relaxed and not lost:
        return [f"{name}: its handler ran twice at once (a live call taken over)"]
    return []
