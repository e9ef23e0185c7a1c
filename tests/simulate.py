"""Run the charge-path simulation over many seeds (``make simulate``), or replay one.

    .venv/bin/python tests/simulate.py --backend sqlite --seeds 0:20000
    .venv/bin/python tests/simulate.py --backend postgresql --seed 1234 -v

Each failing seed prints one line that reproduces it; ``-v`` prints the schedule it ran.
PostgreSQL runs in a database of its own (``CREDIT_TEST_DATABASE_URL``'s server), dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sim import Simulation, reproduce

PG_BASE = os.environ.get("CREDIT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@asynccontextmanager
async def database(backend: str) -> AsyncIterator[str]:
    """A fresh, empty ledger database for ``backend``: its URL."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/sim.db"
        return
    import asyncpg

    name = f"cm_sim_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(PG_BASE, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, query = PG_BASE.partition("?")
    url = f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
    try:
        yield url
    finally:
        admin = await asyncpg.connect(PG_BASE, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def run_seeds(backend: str, seeds: range, verify_every: int = 200) -> list[str]:
    """Run ``seeds``; returns one line per failing seed (its reproduction and first problem)."""
    failures: list[str] = []
    async with database(backend) as url, Simulation(url) as sim:
        clean_since = seeds.start
        for seed in seeds:
            problems = await sim.seed(seed)
            if problems:
                failures.append(f"{reproduce(backend, seed)}  # {problems[0]}")
            if (seed - seeds.start + 1) % verify_every == 0 or seed == seeds.stop - 1:
                bad = await sim.verify()
                if bad:
                    failures.append(
                        f"verify failed after seeds {clean_since}..{seed}: {bad[0]}"
                        f" (run them one by one with --seed to find which)"
                    )
                    break
                clean_since = seed + 1
    return failures


async def one(backend: str, seed: int, verbose: bool) -> int:
    async with database(backend) as url, Simulation(url) as sim:
        lines = await sim.seed(seed, verbose=verbose)
        lines += await sim.verify()
    for line in lines:
        print(line)
    problems = lines if not verbose else lines[lines.index("-- problems:") + 1 :]
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append")
    parser.add_argument("--seeds", default="0:2000", help="a range, start:stop")
    parser.add_argument("--seed", type=int, help="replay one seed")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the schedule")
    args = parser.parse_args()
    backends = args.backend or ["sqlite", "postgresql"]
    if args.seed is not None:
        return max(asyncio.run(one(b, args.seed, args.verbose)) for b in backends)
    start, stop = (int(part) for part in args.seeds.split(":"))
    failed = 0
    for backend in backends:
        began = time.monotonic()
        failures = asyncio.run(run_seeds(backend, range(start, stop)))
        took = time.monotonic() - began
        print(f"{backend}: {stop - start} seeds in {took:.0f}s, {len(failures)} failing")
        for line in failures:
            print("  " + line)
        failed += len(failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
