"""The fault suite's reconciliation (``chaos/``) on made-up runs: what the charge contract
allows passes every bar, and each way of breaking it fails the bar meant for it.

No servers: the clients' records and the ledger's entries are written down by hand.
"""

from __future__ import annotations

import itertools

from chaos.books import Books, Entry
from chaos.load import Attempt, Call
from chaos.reconcile import reconcile
from chaos.report import bars, to_json

USER = "chaos-t-0"
_ids = itertools.count(1)


def attempt(t: float, status: int | None, **headers: str) -> Attempt:
    a = Attempt(t_send=t, t_end=t + 0.5, status=status)
    a.headers = {k.lower().replace("_", "-"): v for k, v in headers.items()}
    return a


def entry(kind: str, t: float, key: str | None, ref: int | None = None) -> Entry:
    return Entry(next(_ids), USER, kind, 1000, key, ref, t + 0.1)


def books(*entries: Entry, trials: int = 1, verify_ok: bool = True) -> Books:
    found = [] if verify_ok else [{"invariant": 1, "account_id": USER, "detail": "off"}]
    return Books(
        entries=list(entries),
        accounts={USER},
        trials={USER: trials},
        verify={"ok": verify_ok, "accounts": 1, "entries": len(entries), "discrepancies": found},
    )


def failing(calls: list[Call], ledger: Books) -> dict[str, int]:
    checked = bars(reconcile(calls, ledger, []))
    return {name: value for name, (value, ok) in checked.items() if not ok}


def call(key: str, *attempts: Attempt, route: str = "echo") -> Call:
    return Call(USER, route, key, list(attempts))


KEYS = {name: f"{n:032x}" for n, name in enumerate("abcdefgh", start=1)}


def test_what_the_contract_allows_passes_every_bar() -> None:
    k = KEYS
    calls = [
        call(k["a"], attempt(1, 200, credit_charge_id=f"idem:{k['a']}")),
        # the answer was lost after the charge; the retry is a replay and costs nothing
        call(k["b"], attempt(2, None), attempt(3, 200, idempotent_replayed="true")),
        # a 503 that charged nothing (its charge was reversed), then a served retry
        call(k["c"], attempt(4, 503, retry_after="5"), attempt(10, 200)),
        call(k["d"], attempt(11, 404), route="missing"),
        call(k["e"], attempt(12, 409), attempt(13, 200)),
        call(k["f"], attempt(14, 402)),
        # the answer was lost after the charge; the retry resumed that charge and was served
        call(k["g"], attempt(15, None), attempt(16, 200)),
    ]
    first_c = entry("debit", 4, f"idem:{k['c']}")
    ledger = books(
        entry("debit", 1, f"idem:{k['a']}"),
        entry("debit", 2, f"idem:{k['b']}"),
        first_c,
        entry("refund", 4.2, f"refund:{first_c.entry_id}", ref=first_c.entry_id),
        entry("debit", 10, f"idem:{k['c']}:2"),
        entry("capture", 13, None),  # a handler-billed call: placed by user and time
        entry("debit", 15, "c_0123"),  # a charge id the client never saw
    )
    assert failing(calls, ledger) == {}
    figures = reconcile(calls, ledger, [])
    assert figures.charges["lost_in_flight"] == 1
    assert figures.charges["resumed"] == 1
    assert figures.charges["reversed"] == 1
    assert to_json(figures, [], {"load_started": 0})["ok"] is True


def test_a_503_whose_charge_stands_fails() -> None:
    """main's bug: the debit committed, the client was told 503, the retry was served free."""
    k = KEYS["a"]
    calls = [call(k, attempt(1, 503, retry_after="5"), attempt(7, 200))]
    assert failing(calls, books(entry("debit", 1, f"idem:{k}"))) == {
        "charged 503s": 1,
        "lost money (charges for calls not served, µc)": 1000,
        "charges for calls not served": 1,
        "metered first-served 2xx without a debit": 1,
    }


def test_billing_a_404_or_a_replay_or_twice_is_lost_money() -> None:
    k = KEYS
    calls = [
        call(k["a"], attempt(1, 404), route="missing"),
        call(k["b"], attempt(2, 200), attempt(3, 200, idempotent_replayed="true")),
    ]
    ledger = books(
        entry("debit", 1, f"idem:{k['a']}"),
        entry("debit", 2, f"idem:{k['b']}"),
        entry("debit", 3, f"idem:{k['b']}:again"),
    )
    result = failing(calls, ledger)
    assert result["charges for calls not served"] == 2
    assert "charged 503s" not in result


def test_undocumented_5xx_trials_and_verify_fail() -> None:
    calls = [
        call(KEYS["a"], attempt(1, 502), route="chat"),
        call(KEYS["b"], attempt(2, 503)),  # no Retry-After
        call(KEYS["c"], attempt(3, 200)),
    ]
    ledger = books(entry("debit", 3, f"idem:{KEYS['c']}"), trials=2, verify_ok=False)
    assert failing(calls, ledger) == {
        "undocumented 5xx (not 503 + Retry-After)": 2,
        "users with more than one trial": 1,
        "verify discrepancies": 1,
    }


def test_a_capture_written_after_its_call_was_answered_goes_by_its_holds_key() -> None:
    """A handler-billed call's capture kept for later (the ledger was down as the call
    ended) lands after the user's next call got a 503: it is the served call's charge, found
    through its hold's key, not the 503's (placing it by time would blame the 503)."""
    k = KEYS
    served_id, refused_id = "c_" + "1" * 24, "c_" + "2" * 24
    calls = [
        call(k["a"], attempt(1, 200, credit_charge_id=served_id), route="chat"),
        call(k["b"], attempt(3, 503, retry_after="5", credit_charge_id=refused_id), route="chat"),
    ]
    hold = Entry(next(_ids), USER, "hold", 1000, f"litellm:{served_id}", None, 1.1, hold_id=7)
    late = Entry(next(_ids), USER, "capture", 400, None, None, 3.2, hold_id=7)
    assert failing(calls, books(hold, late)) == {}
    figures = reconcile(calls, books(hold, late), [])
    assert figures.charges["served"] == 1
    assert figures.counts["charge_id_mismatches"] == 0
