"""The ledger against what the clients saw.

Every standing charge (a debit or capture not cancelled by a refund that references it) is
placed on the attempt that caused it: its logical call by key (a ``Credit-Charge-Id`` the
responses named, or an entry key containing the call's ``Idempotency-Key``), else by the user
(a user has one call in flight at a time); within the call, the last attempt sent before the
entry was written (or, when that attempt's answer was lost, the later attempt of the call that
was served on that charge). Then each attempt's answer says whether the charge was honest.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import contract
from .books import Books, Entry
from .faults import Fault
from .load import Attempt, Call

#: seconds before a fault's start (requests already in flight) and after its end still counted
#: as "during" it, for the breakdown by fault
LEAD_IN = 2.0
AFTERMATH = 10.0


@dataclass
class Figures:
    """Everything the report prints and the bars are checked against."""

    counts: dict[str, Any] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    finals: Counter[str] = field(default_factory=Counter)
    charges: Counter[str] = field(default_factory=Counter)
    lost_micros: int = 0
    by_fault: dict[str, Counter[str]] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)


def status_class(a: Attempt) -> str:
    if a.status is None:
        return "lost_in_flight" if a.sent else "not_connected"
    if 200 <= a.status < 300:
        return "2xx_replayed" if a.replayed else "2xx_first"
    if a.status == 503:
        return "503" if a.headers.get(contract.RETRY_AFTER.lower()) else "503_no_retry_after"
    if a.status in (402, 404, 405, 409, 422, 429):
        return str(a.status)
    if a.status < 400:
        return "3xx"
    return "other_4xx" if a.status < 500 else "other_5xx"


#: how a standing charge is judged by the answer of the attempt it landed on
_VERDICT = {
    "2xx_first": "served",
    "2xx_replayed": "charged_replay",
    "lost_in_flight": "lost_in_flight",
    "503": "charged_503",
    "503_no_retry_after": "charged_503",
}
BAD_CHARGES = (
    "charged_503",
    "charged_replay",
    "charged_refusal",
    "double",
    "unattributed",
)


class _Placer:
    def __init__(self, calls: list[Call], entries: list[Entry]) -> None:
        self.hold_keys = {
            e.hold_id: e.key for e in entries if e.kind == "hold" and e.hold_id and e.key
        }
        self.by_user: dict[str, list[tuple[float, Call, Attempt]]] = {}
        self.by_key: dict[str, Call] = {}
        self.charge_ids: dict[str, Call] = {}
        for call in calls:
            self.by_key[call.key] = call
            for a in call.attempts:
                self.by_user.setdefault(call.user, []).append((a.t_send, call, a))
                if a.charge_id:
                    self.charge_ids[a.charge_id] = call
        for seq in self.by_user.values():
            seq.sort(key=lambda item: item[0])
        self._times = {u: [t for t, _, _ in seq] for u, seq in self.by_user.items()}

    def key_of(self, entry: Entry) -> str:
        """The entry's key; a capture carries none of its own: it is the charge of the hold
        it settled, which may have been written long after its call was answered (a
        settlement kept for later), so it goes by its hold's key."""
        return entry.key or self.hold_keys.get(entry.hold_id or 0) or ""

    def call_of(self, entry: Entry) -> Call | None:
        key = self.key_of(entry)
        if key in self.charge_ids:
            return self.charge_ids[key]
        for part in contract.charge_ids_in(key):
            if part in self.charge_ids:
                return self.charge_ids[part]
        for part in contract.client_keys_in(key):
            if part in self.by_key:
                return self.by_key[part]
        return None

    def place(self, entry: Entry) -> tuple[Call, Attempt] | None:
        call = self.call_of(entry)
        if call is not None and call.user == entry.account_id and call.attempts:
            sent = [a for a in call.attempts if a.t_send <= entry.created_at]
            return call, (sent[-1] if sent else call.attempts[0])
        times = self._times.get(entry.account_id)
        if not times:
            return None
        i = bisect.bisect_right(times, entry.created_at) - 1
        if i < 0:
            return None
        _, call, attempt = self.by_user[entry.account_id][i]
        return call, attempt


def reconcile(calls: list[Call], books: Books, faults: list[Fault]) -> Figures:
    fig = Figures()
    placer = _Placer(calls, books.entries)
    attempts = [(c, a) for c in calls for a in c.attempts]
    for _, a in attempts:
        fig.statuses[status_class(a)] += 1
    for c in calls:
        fig.finals[status_class(c.final) if c.final else "none"] += 1
    placed = _place_all(fig, placer, books)
    billed: Counter[int] = Counter()  # id(attempt) -> standing charges placed on it
    mismatched = 0
    for entry, standing, spot, resumed in placed:
        seen_at = entry.created_at  # for the breakdown: when the client got its answer
        if spot is None:
            verdict = "unattributed"
        else:
            attempt = spot
            seen_at = attempt.t_end
            billed[id(attempt)] += 1
            verdict = _VERDICT.get(status_class(attempt), "charged_refusal")
            if billed[id(attempt)] > 1:
                verdict = "double"
            elif (
                verdict == "served"
                and not resumed
                and attempt.charge_id not in (None, entry.key)
                and attempt.charge_id not in contract.charge_ids_in(placer.key_of(entry))
            ):
                mismatched += 1  # the response named another charge id than the entry has
                _note(fig, "charge_id_mismatch", f"{attempt.charge_id} vs {entry.key}")
        fig.charges[verdict] += 1
        if verdict == "lost_in_flight":
            _note(fig, verdict, f"entry {entry.entry_id} {entry.kind} key={entry.key}")
        if verdict in BAD_CHARGES:
            fig.lost_micros += standing
            _note(fig, verdict, f"entry {entry.entry_id} {entry.kind} key={entry.key}")
            _near(fig, faults, seen_at, verdict)
    served_unbilled = 0
    for call, a in attempts:
        if call.metered and status_class(a) == "2xx_first" and not billed[id(a)]:
            served_unbilled += 1
            _note(fig, "served_unbilled", f"{call.route} key={call.key}")
            _near(fig, faults, a.t_end, "served_unbilled")
    for call, a in attempts:
        cls = status_class(a)
        if cls in ("503_no_retry_after", "other_5xx"):
            _note(fig, "undocumented_5xx", f"{call.route} {a.status} {a.problem}")
            _near(fig, faults, a.t_end, "undocumented_5xx")
        elif cls in ("503", "lost_in_flight"):
            _near(fig, faults, a.t_end, cls)
    fig.counts = {
        "logical_calls": len(calls),
        "attempts": len(attempts),
        "metered_first_served_2xx": sum(
            1 for c, a in attempts if c.metered and status_class(a) == "2xx_first"
        ),
        "served_unbilled": served_unbilled,
        "charge_id_mismatches": mismatched,
        "undocumented_5xx": fig.statuses["503_no_retry_after"] + fig.statuses["other_5xx"],
        "users": len({c.user for c in calls}),
    }
    fig.trials = _trials(calls, books, billed)
    fig.verify = books.verify
    return fig


def _place_all(
    fig: Figures, placer: _Placer, books: Books
) -> list[tuple[Entry, int, Attempt | None, bool]]:
    """(entry, what stands of it, the attempt it lands on, whether a retry resumed it) for
    every standing charge. A charge taken by an attempt whose answer was lost, when a later
    attempt of the same call was served without a charge of its own, is that served answer's
    (the retry resumed it: one charge, one answer)."""
    out: list[tuple[Entry, int, Attempt | None, bool]] = []
    taken: set[int] = set()
    lost: list[tuple[int, Call, Attempt]] = []
    for entry, standing in books.charges():
        if standing <= 0:
            fig.charges["reversed"] += 1
            continue
        fig.charges["standing"] += 1
        spot = placer.place(entry)
        if spot is not None:
            taken.add(id(spot[1]))
            if spot[1].lost_in_flight:
                lost.append((len(out), spot[0], spot[1]))
        out.append((entry, standing, spot[1] if spot else None, False))
    for index, call, attempt in lost:
        later = call.attempts[call.attempts.index(attempt) + 1 :]
        for a in later:
            if status_class(a) == "2xx_first" and id(a) not in taken:
                taken.add(id(a))
                entry, standing, _, _ = out[index]
                out[index] = (entry, standing, a, True)
                fig.charges["resumed"] += 1
                break
    return out


def _trials(calls: list[Call], books: Books, billed: Counter[int]) -> dict[str, int]:
    served = {c.user for c in calls for a in c.attempts if billed[id(a)]}
    counts = Counter(books.trials.get(u, 0) for u in books.accounts)
    return {
        "accounts": len(books.accounts),
        "one_trial": counts[1],
        "no_trial": counts[0],
        "more_than_one": sum(n for k, n in counts.items() if k > 1),
        "served_without_trial": sum(1 for u in served if books.trials.get(u, 0) == 0),
        "open_holds": books.open_holds,
    }


def _note(fig: Figures, what: str, text: str) -> None:
    seen = fig.examples.setdefault(what, [])
    if len(seen) < 5:
        seen.append(text)


def _near(fig: Figures, faults: list[Fault], t: float, what: str) -> None:
    name = "no fault"
    for fault in faults:
        if fault.t_start - LEAD_IN <= t <= fault.t_end + AFTERMATH:
            name = fault.name
    fig.by_fault.setdefault(name, Counter())[what] += 1
