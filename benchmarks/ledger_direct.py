"""The ledger alone, in process: debit throughput under concurrency and latency at c=1.

``python -m benchmarks.ledger_direct [--url URL] [--conc 32] [--seconds 5] [--rounds 3]``
(default URL: a fresh SQLite file, the embedded default). Each round: a closed loop of
``--conc`` tasks debiting their own accounts for ``--seconds``, then one task debiting
sequentially; prints per-round figures and the medians as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from credit_middleware import Ledger


async def _throughput(ledger: Ledger, conc: int, seconds: float, tag: str) -> float:
    done = 0
    end = time.perf_counter() + seconds

    async def debitor(i: int) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await ledger.debit(f"{tag}-{i}", "0.000001")
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(debitor(i) for i in range(conc)))
    return done / (time.perf_counter() - start)


async def _latency(ledger: Ledger, seconds: float, account: str) -> list[float]:
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await ledger.debit(account, "0.000001")
        out.append(time.perf_counter() - t0)
    return out


async def run(url: str, conc: int, seconds: float, rounds: int) -> dict[str, Any]:
    ledger = Ledger(url)
    await ledger.migrate()
    for i in range(conc):
        await ledger.open_account(f"bench-{i}")
        await ledger.grant(f"bench-{i}", "1000")
    per_round: list[dict[str, float]] = []
    try:
        await _throughput(ledger, conc, 0.5, "bench")  # warm-up
        for _ in range(rounds):
            rate = await _throughput(ledger, conc, seconds, "bench")
            lat = sorted(await _latency(ledger, seconds / 2, "bench-0"))
            per_round.append(
                {
                    "throughput_per_s": rate,
                    "c1_p50_ms": 1000 * lat[len(lat) // 2],
                    "c1_p99_ms": 1000 * lat[int(len(lat) * 0.99)],
                }
            )
            print(json.dumps(per_round[-1]), flush=True)
        assert (await ledger.verify()).ok
    finally:
        await ledger.close()
    medians = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    return {"url": url.split("?")[0], "conc": conc, "seconds": seconds, "median": medians}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url")
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        print(json.dumps(asyncio.run(run(url, args.conc, args.seconds, args.rounds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
