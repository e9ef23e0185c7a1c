"""Differential, the request side: ``credit_begin()`` / ``credit_finish()`` against the generic
``begin_request`` / ``finish_request``, step by step, concurrent batches included.

The same two ledgers as ``test_ledger_differential`` (one server-side, one generic, one clock)
get the same random sequence of request operations: keyed charges of every kind (debit, hold,
none) claiming a few keys with a few fingerprints and charge ids, so that keys are replayed,
mismatched, in flight, taken over after their lease, forgotten after their time, voided;
settlements of every shape (a stored response, a freed key, a capture alone or with its
response, a refund, a release); resolutions (found, fenced, reversed) and keep-alives; plain
charges and time passing between them; and bursts of concurrent keyed charges and stores,
which the server-side ledger sends as one group commit. After every step both must agree on
the outcome (state, receipt, stored response, charge id, or the error and its wording) and on
every balance; at the end on every entry and hold, and ``verify`` must be clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from typing import Any

from conftest import Clock
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_ledger_differential import ACCOUNTS, TRIAL, Side, run, schemas

from credit_middleware import CreditError, Ledger
from credit_middleware.ledger import ChargeSpec, RequestStart, StoredResponse
from credit_middleware.money import from_micros

__all__ = ["schemas"]  # the fixture, shared

accounts = st.sampled_from(ACCOUNTS)
request_keys = st.sampled_from(["r1", "r2"])
owners = st.sampled_from(["o1", "o2", "o3", "o4"])
kinds = st.sampled_from(["debit", "debit", "hold", None])
amounts = st.one_of(st.integers(1, 3_000_000), st.sampled_from([TRIAL, TRIAL + 1]))
OK = StoredResponse(200, (("content-type", "application/json"),), b'{"ok":1}', 8)
BIG = StoredResponse(200, (), None, 5_000)

begins = st.tuples(
    st.just("begin"),
    accounts,
    request_keys,
    st.sampled_from(["fpA", "fpA", "fpB"]),
    owners,
    kinds,
    amounts,
    st.sampled_from([5, 30]),  # lease
    st.sampled_from([60, 3000]),  # ttl
)
ops = st.one_of(
    begins,
    st.tuples(
        st.just("finish"),
        accounts,
        request_keys,
        owners,
        st.sampled_from(["store", "store", "big", "free", "capture", "capture+store"]),
        st.integers(0, 3_000_000),
    ),
    st.tuples(st.just("finish"), accounts, request_keys, owners, st.just("refund"), st.just(0)),
    st.tuples(st.just("finish"), accounts, request_keys, owners, st.just("release"), st.just(0)),
    st.tuples(st.just("plain"), accounts, st.integers(1, 2_000_000), owners, kinds),
    st.tuples(st.just("resolve"), accounts, request_keys, owners, st.booleans()),
    st.tuples(st.just("extend"), accounts, request_keys, owners, st.booleans()),
    st.tuples(st.just("advance"), st.sampled_from([1, 6, 31, 51, 61, 3001])),
    st.tuples(
        st.just("burst"),
        st.lists(
            st.tuples(
                st.sampled_from(["begin", "begin", "store"]),
                accounts,
                st.sampled_from(["b1", "b2", "b3", "r1"]),
                # each a fresh charge id, as concurrent attempts have (one the sequence used
                # already would leave the batch for the generic path, after its neighbours:
                # no longer the sequential order the generic ledger takes them in)
                st.just(""),
                st.integers(1, 1_000_000),
            ),
            min_size=2,
            max_size=5,
        ).map(tuple),
    ),
)
# A request's whole life in a row: its charge, time passing, its settlement by the same
# attempt (so that settlements meet keys they own, not only ones they lost).
flows = st.builds(
    lambda begin, wait, action, amount: [
        begin,
        ("advance", wait),
        ("finish", begin[1], begin[2], begin[4], action, amount),
    ],
    begins,
    st.sampled_from([0, 0, 6, 31, 51]),
    st.sampled_from(["store", "free", "capture", "capture+store", "refund", "release"]),
    st.integers(0, 3_000_000),
)
sequences = st.builds(
    lambda tail: [("provision", "a"), ("provision", "b"), *tail],
    st.lists(
        st.one_of(ops.map(lambda op: [op]), ops.map(lambda op: [op, op]), flows), max_size=16
    ).map(lambda runs: [op for run in runs for op in run]),
)


class Requests(Side):
    """A side that also remembers each charge id's charge (to refund, release or capture)."""

    def __init__(self, ledger: Ledger, prefix: str) -> None:
        super().__init__(ledger, prefix)
        self.charges: dict[str, Any] = {}

    def start(self, s: RequestStart) -> tuple[Any, ...]:
        response = None
        if s.response is not None:
            r = s.response
            response = (r.status, r.headers, r.body, r.size)
        return (s.state, self.receipt(s.receipt), response, s.charge_key)


async def step(side: Requests, op: tuple[Any, ...], clock: Clock) -> Any:
    led, name = side.ledger, op[0]
    try:
        if name == "provision":
            await led.provision(side.aid(op[1]), tier="trial", trial_amount=from_micros(TRIAL))
            return None
        if name == "advance":
            return None
        if name == "begin":
            _, who, key, fp, owner, kind, amount, lease, ttl = op
            spec = None if kind is None else ChargeSpec(kind, from_micros(amount), hold_timeout=50)
            s = await led.begin_request(
                side.aid(who), key, fp, owner=owner, charge=spec, lease=lease, ttl=ttl
            )
            if s.receipt is not None and s.state != "resumed":
                side.charges[owner] = s.receipt
            return side.start(s)
        if name == "plain":
            _, who, amount, owner, kind = op
            if kind == "hold":
                r = await led.hold(side.aid(who), from_micros(amount), key=owner, timeout=50)
            else:
                r = await led.debit(side.aid(who), from_micros(amount), key=owner)
            side.charges.setdefault(owner, r)
            return side.receipt(r)
        if name == "finish":
            _, who, key, owner, action, amount = op
            charge = side.charges.get(owner)
            hold_id = charge.hold.hold_id if charge is not None and charge.hold else 10**12
            kwargs: dict[str, Any] = {}
            if action in ("store", "capture+store"):
                kwargs["response"] = OK
            elif action == "big":
                kwargs["response"] = BIG
            if action.startswith("capture"):
                kwargs["capture"] = (hold_id, from_micros(amount))
                kwargs["keep"] = action == "capture"
            if action == "refund" and charge is not None and charge.hold is None:
                kwargs["refund"] = charge
            if action == "release":
                kwargs["release"] = hold_id
            moved = await led.finish_request(side.aid(who), key, owner=owner, **kwargs)
            return None if moved is None else side.receipt(moved)
        if name == "resolve":
            _, who, key, owner, reverse = op
            found = await led.resolve_request(side.aid(who), key, owner=owner, reverse=reverse)
            return None if found is None else side.start(found)
        if name == "extend":
            _, who, key, owner, with_hold = op
            charge = side.charges.get(owner)
            hold_id = charge.hold.hold_id if with_hold and charge and charge.hold else None
            return await led.extend_request(
                side.aid(who), key, owner=owner, lease=30, hold_id=hold_id, hold_timeout=50
            )
    except (CreditError, ValueError) as exc:
        return side.error(exc)
    raise AssertionError(op)  # pragma: no cover


async def _item(side: Requests, item: tuple[Any, ...], fresh: str) -> Any:
    kind, who, key, owner, amount = item
    owner = owner or fresh
    if kind == "begin":
        op: tuple[Any, ...] = ("begin", who, key, "fpA", owner, "debit", amount, 30, 3000)
    else:
        op = ("finish", who, key, owner, "store", 0)
    return await step(side, op, Clock())


async def burst(fast: Requests, slow: Requests, items: list[tuple[Any, ...]]) -> None:
    """Concurrent keyed charges and stores: one group commit on the server-side ledger, one
    by one on the generic one (see ``test_ledger_differential.burst``)."""
    for side in (fast, slow):
        if await side.ledger.get_account(side.aid("z")) is None:
            await side.ledger.open_account(side.aid("z"))
            await side.ledger.grant(side.aid("z"), 1, key="z")
        for name in ACCOUNTS:
            with contextlib.suppress(CreditError):
                await side.ledger.sweep(side.aid(name))
    async with fast.ledger._x.read() as conn:
        due = await conn.fetchval(
            "SELECT COUNT(*) FROM credit_accounts WHERE account_id = ANY($1::text[])"
            " AND sweep_at <= $2",
            [fast.aid(name) for name in ACCOUNTS],
            fast.ledger.now_us(),
        )
    fresh = [f"q{secrets.token_hex(3)}" for _ in items]
    if due:  # the server would leave these to the generic path: one by one instead
        for item, owner in zip(items, fresh, strict=True):
            assert await _item(fast, item, owner) == await _item(slow, item, owner)
        return
    batcher = fast.ledger._batcher
    batches = batcher.batches
    z = [fast.ledger.debit(fast.aid("z"), from_micros(1)) for _ in range(2)]
    got = await asyncio.gather(
        *z, *(_item(fast, item, owner) for item, owner in zip(items, fresh, strict=True))
    )
    assert batcher.batches - batches == 3, "the burst was not sent as one batch"
    for _ in range(2):
        await slow.ledger.debit(slow.aid("z"), from_micros(1))
    want = [await _item(slow, item, owner) for item, owner in zip(items, fresh, strict=True)]
    assert got[2:] == want, f"burst {items}:\n fast {got[2:]}\n slow {want}"


@settings(
    max_examples=int(os.environ.get("CREDIT_DIFF_EXAMPLES", "40")),
    deadline=None,
    derandomize=os.environ.get("CREDIT_DIFF_RANDOM") is None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=sequences)
@example(  # a crashed attempt's charge taken over, its taker lost, the charge handed back
    steps=[
        ("provision", "a"),
        ("provision", "b"),
        ("begin", "a", "r1", "fpA", "o1", "debit", 500_000, 30, 3000),
        ("advance", 31),
        ("begin", "a", "r1", "fpA", "o2", "debit", 500_000, 30, 3000),
        ("resolve", "a", "r1", "o2", True),
        ("begin", "a", "r1", "fpA", "o3", "debit", 500_000, 30, 3000),
        ("finish", "a", "r1", "o3", "store", 0),
        ("begin", "a", "r1", "fpA", "o4", "debit", 500_000, 30, 3000),
    ]
)
@example(  # a held request: captured, then stored; replayed; a late capture
    steps=[
        ("provision", "a"),
        ("provision", "b"),
        ("begin", "a", "r1", "fpA", "o1", "hold", 1_000_000, 30, 3000),
        ("finish", "a", "r1", "o1", "capture", 400_000),
        ("finish", "a", "r1", "o1", "capture", 400_000),
        ("finish", "a", "r1", "o1", "store", 0),
        ("begin", "a", "r1", "fpA", "o2", "hold", 1_000_000, 30, 3000),
        ("begin", "a", "r2", "fpA", "o3", "hold", 1_000_000, 30, 3000),
        ("advance", 51),
        ("finish", "a", "r2", "o3", "capture+store", 2_000_000),
    ]
)
def test_fast_and_generic_request_paths_agree_step_by_step(
    schemas: tuple[str, str], steps: list[tuple[Any, ...]]
) -> None:
    asyncio.run(run(schemas, steps, Requests, step, burst))
