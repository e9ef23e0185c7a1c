"""``make bench-scale``: how every operator action grows with the ledger.

``python -m benchmarks.scale [--sizes 10000,100000,1000000] [--backends postgresql,sqlite]
[--gate] [--out DIR]``

For each backend and size, a ledger is built in bulk through the project's own schema
(``scale_ledger``: N entries, N/10 accounts, one account holding half the entries), with
100,000 expired idempotency records beside N/10 live ones, and each operator action is timed
on it: a debit (p50 of 200), ``verify`` (whole, and incremental after those debits), the
rollups' first build (once per ledger) and a report from them, the same report counted from
every entry (the full recomputation), the admin dashboard, the account page of the largest
account, the three admin searches, and the purge of the expired records (set-based batches)
against one plain ``DELETE`` of the same rows. Times are medians of a few runs. The growth
table gives each figure per size and its ratio to the size before.

``--gate`` (CI: ``make bench-scale-ci``) exits 1 when an action that should not grow with the
ledger (``scale_report.GATED``) grows more than 3x per 10x entries. A whole ``verify`` and the
first build of the rollups read every entry by design (bounded per statement, not in total)
and are reported, not gated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from credit_middleware import Ledger
from credit_middleware.admin import admin_app
from credit_middleware.report import build_report

from . import scale_report
from .scale_ledger import (
    DAY_US,
    SPAN_US,
    T0_US,
    WHALE,
    Shape,
    build_statements,
    fill_postgres,
    fill_sqlite,
    requests_statements,
)

BASE_URL = os.environ.get("CREDIT_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
NOW_US = T0_US + SPAN_US + DAY_US
EXPIRED = 100_000
TOKEN = "scale-bench-admin-token-0123456789"
RUNS = 5


def _remove(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


def _clock() -> float:
    return NOW_US / 1e6


async def _median(fn: Callable[[], Awaitable[Any]], runs: int = RUNS) -> float:
    await fn()  # warm: plans, pools, caches
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = await fn()
    return time.perf_counter() - started, out


class _Place:
    """Where one backend's ledgers live (a database or a folder of the run's own)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.name = f"credit_scale_{secrets.token_hex(4)}"
        self.folder = Path(tempfile.mkdtemp(prefix="credit-scale-"))

    def _admin_url(self, db: str) -> str:
        head, _, query = BASE_URL.partition("?")
        return head.rsplit("/", 1)[0] + f"/{db}" + (f"?{query}" if query else "")

    async def _admin(self, db: str, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._admin_url(db))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def open(self) -> None:
        if self.backend == "postgresql":
            await self._admin("postgres", f'CREATE DATABASE "{self.name}"')

    def url(self, entries: int) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.folder / f'ledger_{entries}.db'}"
        return self._admin_url(self.name) + f"?search_path=s{entries}"

    async def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.backend == "postgresql":
            await self._admin("postgres", f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


async def _build(place: _Place, shape: Shape) -> tuple[str, float]:
    url = place.url(shape.entries)
    if place.backend == "postgresql":
        await place._admin(place.name, f"CREATE SCHEMA s{shape.entries}")
    ledger = Ledger(url, clock=_clock, timeout=60)
    await ledger.migrate()
    await ledger.close()
    rows = build_statements(place.backend, shape) + requests_statements(
        place.backend, EXPIRED, shape.regular, NOW_US
    )
    started = time.perf_counter()
    if place.backend == "sqlite":
        await asyncio.to_thread(fill_sqlite, url.removeprefix("sqlite:///"), rows)
    else:
        await fill_postgres(url, rows)
    return url, time.perf_counter() - started


async def _request_bytes(conn: Any) -> float:
    """What the idempotency store keeps per record, its indexes included."""
    rows = int(await conn.fetchval("SELECT COUNT(*) FROM credit_requests"))
    if conn.dialect == "postgresql":
        size = await conn.fetchval("SELECT pg_total_relation_size('credit_requests')")
    else:
        size = await conn.fetchval(
            "SELECT SUM(pgsize) FROM dbstat WHERE name = 'credit_requests'"
            " OR name LIKE 'credit_requests_%' OR name LIKE 'sqlite_autoindex_credit_requests%'"
        )
    return int(size or 0) / rows if rows else 0.0


async def _purge(ledger: Ledger, rounds: int = 5) -> dict[str, float]:
    """The expired records purged in set-based batches, then as many again by one plain
    DELETE, in turn for a few rounds (medians: the two are measured alike on a busy machine).
    The first round purges the ledger's own 100k."""

    async def vacuum() -> None:  # both start from a table autovacuum has seen (PostgreSQL)
        if ledger.dialect == "postgresql":
            import asyncpg

            conn = await asyncpg.connect(ledger.url)
            try:
                await conn.execute("VACUUM ANALYZE credit_requests")
            finally:
                await conn.close()

    async def refill(tag: str) -> None:
        async def write(conn: Any) -> None:
            for sql in requests_statements(conn.dialect, EXPIRED, 0, NOW_US):
                await conn.execute(sql.replace("'req-' || i", f"'{tag}-' || i"))

        await ledger._x.run(write)
        await vacuum()

    async def batches() -> int:
        purged = 0
        while (n := await ledger.purge_requests(limit=5000)) > 0:
            purged += n
        return purged

    async def plain(conn: Any) -> None:
        await conn.execute("DELETE FROM credit_requests WHERE expires_at <= $1", NOW_US)

    purges, deletes, purged = [], [], 0
    await vacuum()
    stored = await ledger._x.run(_request_bytes, write=False)
    for r in range(rounds):
        if r:
            await refill(f"p{r}")
        took, purged = await _timed(batches)
        purges.append(took)
        await refill(f"d{r}")
        one, _ = await _timed(lambda: ledger._x.run(plain))
        deletes.append(one)
    took, one = statistics.median(purges), statistics.median(deletes)
    return {
        "purge_s": took,
        "purged": purged,
        "purge_rows_per_s": purged / took if took else 0.0,
        "plain_delete_s": one,
        "bytes_per_request": stored,
        "purge_vs_plain_delete": statistics.median(
            p / d for p, d in zip(purges, deletes, strict=True)
        ),
    }


async def _measure(url: str, shape: Shape) -> dict[str, Any]:
    ledger = Ledger(url, clock=_clock, timeout=60)
    out: dict[str, Any] = {}
    try:
        payers = [f"user-{20 * k + 1}" for k in range(50)]  # as many at every size
        latencies = []
        await ledger.debit(payers[0], "0.001", route="/v1/chat")  # warm
        await ledger.verify(checkpoint=True)  # the checkpoint the incremental run starts from
        for i in range(200):
            started = time.perf_counter()
            await ledger.debit(payers[i % len(payers)], "0.001", route="/v1/chat")
            latencies.append(time.perf_counter() - started)
        out["debit_p50_s"] = statistics.median(latencies)
        out["verify_s"], report = await _timed(ledger.verify)
        assert report.ok, report.discrepancies[:3]
        out["verify_incremental_s"], inc = await _timed(lambda: ledger.verify(incremental=True))
        assert inc.ok
        out["rollup_build_s"], _ = await _timed(ledger.refresh_rollups)
        out["report_s"] = await _median(lambda: build_report(ledger))
        out["report_full_recount_s"] = await _median(
            lambda: ledger.report_rows(-(2**62), 2**62, 10, source="entries"), runs=1
        )
        app = admin_app(ledger, token=TOKEN)
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        client = httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers)
        async with client as c:

            async def get(path: str, **params: str) -> None:
                r = await c.get(path, params=params)
                assert r.status_code == 200, (path, r.status_code, r.text[:200])

            out["dashboard_s"] = await _median(lambda: get("/"))
            out["account_page_s"] = await _median(lambda: get("/account", id=WHALE))
        for name, query in (
            ("search_domain_s", "@d7.example"),
            ("search_email_s", "user-5@d5.example"),
            ("search_id_prefix_s", "user-1234"),
        ):
            out[name] = await _median(lambda q=query: ledger.search_accounts(q, limit=50))
        out.update(await _purge(ledger))
    finally:
        await ledger.close()
    return out


async def run(sizes: list[int], backends: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {
        "sizes": sizes,
        "backends": {},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load": os.getloadavg(),
        },
    }
    for backend in backends:
        place = _Place(backend)
        await place.open()
        per_size: dict[str, Any] = {}
        try:
            for n in sizes:
                shape = Shape(n)
                url, built = await _build(place, shape)
                entries = shape.total_entries
                print(f"{backend}: built {entries:,} entries in {built:.1f} s", flush=True)
                figures = await _measure(url, shape)
                figures.update(entries=shape.total_entries, accounts=shape.accounts, build_s=built)
                per_size[str(n)] = figures
                print(scale_report.one_line(backend, figures), flush=True)
                if backend == "sqlite":  # disk: each file goes as soon as it is measured
                    await asyncio.to_thread(_remove, url.removeprefix("sqlite:///"))
        finally:
            await place.close()
        results["backends"][backend] = per_size
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--gate", action="store_true", help="exit 1 past a growth bar")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results = asyncio.run(run(sizes, args.backends.split(",")))
    results["gate"] = scale_report.evaluate(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = scale_report.markdown(results)
    (out / "scale.md").write_text(table, encoding="utf-8")
    print(table)
    failed = [c for c in results["gate"] if c["result"] == "FAIL"]
    for c in failed:
        print(f"FAIL: {c['line']}", file=sys.stderr)
    return 1 if failed and args.gate else 0


if __name__ == "__main__":
    sys.exit(main())
