"""The charge path under seeded fault schedules (``tests/_sim.py``), on both backends.

Each seed runs the real middleware and ledger with faults at every ledger operation of the
charge path and checks the outcome against the model of the charge contract; a failing seed
prints the line that replays it. ``make simulate`` runs many more seeds.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from _sim import Simulation, reproduce

SEEDS = int(os.environ.get("CREDIT_SIM_SEEDS", "1000"))
FIRST = int(os.environ.get("CREDIT_SIM_FIRST", "0"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_charge_contract_holds_under_every_schedule(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url"))

    async def run() -> list[str]:
        failures: list[str] = []
        async with Simulation(url) as sim:
            for seed in range(FIRST, FIRST + SEEDS):
                problems = await sim.seed(seed)
                if problems:
                    failures.append(f"{reproduce(backend, seed)}  # {'; '.join(problems)}")
            failures += await sim.verify()
        return failures

    failures = asyncio.run(run())
    assert not failures, f"{len(failures)} failing seeds:\n" + "\n".join(failures[:20])
