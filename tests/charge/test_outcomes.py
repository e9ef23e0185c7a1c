"""How long a money operation is waited for: contention waits, faults refuse.

The waits are driven by hand (``Outcomes.wait`` is given a fake that reports each slice of
``timeout`` as passed): no real time is spent and nothing depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from credit_middleware import BackendUnavailable, Ledger
from credit_middleware.charge.outcomes import Outcomes
from credit_middleware.events import Observer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def outcomes(tmp_path: Path) -> AsyncIterator[Outcomes]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'o.db'}")
    await ledger.migrate()
    try:
        yield Outcomes(ledger, 1.0, Observer())
    finally:
        await ledger.close()


class Slices:
    """A fake ``wait``: each call is one ``timeout`` slice passing; ``busy`` says whether the
    database answered other operations of the process meanwhile."""

    def __init__(self, outcomes: Outcomes, turn_after: int | None, busy: bool) -> None:
        self.outcomes = outcomes
        self.turn = asyncio.Event()
        self.turn_after = turn_after
        self.busy = busy
        self.passed = 0

    async def __call__(self, task: asyncio.Future[Any], seconds: float) -> bool:
        for _ in range(3):
            await asyncio.sleep(0)
        if task.done():
            return True
        self.passed += 1
        if self.busy:
            self.outcomes.answered += 1
        if self.passed == self.turn_after:
            self.turn.set()
        return False


async def nothing(reverse: bool) -> None:
    return None


async def test_a_charge_queued_behind_others_is_waited_for(outcomes: Outcomes) -> None:
    slices = Slices(outcomes, turn_after=6, busy=True)
    outcomes.wait = slices

    async def charge() -> str:
        await slices.turn.wait()  # six timeouts behind the account's other operations
        return "charged"

    assert await outcomes.charge("acct", "c1", charge(), nothing) == "charged"
    assert slices.passed == 6


async def test_a_database_that_answers_nothing_is_given_up_on(outcomes: Outcomes) -> None:
    slices = Slices(outcomes, turn_after=None, busy=False)
    outcomes.wait = slices
    stuck = asyncio.Event()

    async def charge() -> str:
        await stuck.wait()
        return "charged"

    with pytest.raises(BackendUnavailable, match="nothing was charged"):
        await outcomes.charge("acct", "c1", charge(), nothing)
    assert slices.passed == 2  # its timeout, and as long again
    stuck.set()


async def test_contention_is_waited_for_only_so_long(outcomes: Outcomes) -> None:
    slices = Slices(outcomes, turn_after=None, busy=True)
    outcomes.wait = slices
    stuck = asyncio.Event()

    async def charge() -> str:
        await stuck.wait()
        return "charged"

    with pytest.raises(BackendUnavailable):
        await outcomes.charge("acct", "c1", charge(), nothing)
    assert slices.passed == 10  # patience: ten timeouts
    stuck.set()
