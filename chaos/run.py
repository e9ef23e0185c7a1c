"""``python -m chaos``: set up, load with faults, reconcile, report; exit 1 when a bar fails.

Everything it starts (PostgreSQL, Redis, uvicorn) lives in a temporary folder and on free
ports, and is stopped and removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .appserver import ROOT, AppServer
from .books import read_books
from .faults import NAMES, Fault, Faults
from .load import ROUTES, Call, Load, LoadConfig, user_names
from .reconcile import reconcile
from .report import table, to_json, write
from .services import PrivatePostgres, PrivateRedis, check_private


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    p.add_argument("--duration", type=float, default=75.0, help="seconds of load (75)")
    p.add_argument("--concurrency", type=int, default=24, help="concurrent clients (24)")
    p.add_argument("--users", type=int, default=160, help="distinct users (160)")
    p.add_argument("--max-calls", type=int, default=40_000, help="logical calls at most")
    p.add_argument("--lead", type=float, default=6.0, help="seconds before the first fault")
    p.add_argument("--gap", type=float, default=11.0, help="seconds between fault starts")
    p.add_argument("--stall", type=float, default=6.0, help="event-loop stall (2x timeout)")
    p.add_argument("--trial", default="0.1", help="trial credits (100 calls at 0.001)")
    p.add_argument("--rate-limit", default="120/minute;2000/day")
    p.add_argument("--faults", default=",".join(NAMES), help="which, comma-separated (all)")
    p.add_argument("--mix", default="echo=0.85,chat=0.10,missing=0.05", help="route shares")
    p.add_argument(
        "--out",
        default="latest.json",
        help="file under chaos/results/: latest.json is the committed report, ci/ CI's (ignored)",
    )
    p.add_argument("--dump", type=Path, help="also write every attempt here (JSON lines)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    folder = Path(tempfile.mkdtemp(prefix="chaos-"))
    pg, redis = PrivatePostgres(folder), PrivateRedis(folder)
    app: AppServer | None = None
    started = time.time()
    try:
        pg.start()
        redis.start()
        check_private(pg.port, redis.port)
        secret = secrets.token_hex(32)
        env = {
            "CREDIT_DATABASE_URL": pg.url,
            "CREDIT_REDIS_URL": redis.url,
            "CREDIT_JWT_SECRET": secret,
            "CREDIT_TRIAL_AMOUNT": args.trial,
            "CREDIT_RATE_LIMIT": args.rate_limit,
            "CREDIT_CHAOS_STALL": str(args.stall),
        }
        app = AppServer(folder, env)
        app.start()
        check_private(app.port)
        print(f"chaos: postgres :{pg.port}, redis :{redis.port}, app :{app.port} (2 workers)")
        run_id = secrets.token_hex(3)
        users = user_names(run_id, args.users)
        cfg = LoadConfig(
            base_url=app.base_url,
            jwt_secret=secret,
            users=args.users,
            concurrency=args.concurrency,
            duration=args.duration,
            max_calls=args.max_calls,
            mix=_mix(args.mix),
        )
        only = tuple(name.strip() for name in args.faults.split(",") if name.strip())
        if set(only) - set(NAMES):
            raise SystemExit(f"--faults: unknown {sorted(set(only) - set(NAMES))}; use {NAMES}")
        faults = Faults(pg, redis, app, stall=args.stall, only=only)
        load_started = time.time()
        calls, done = asyncio.run(_load_with_faults(Load(cfg, users), faults, args))
        load_s = time.time() - load_started
        app.stop()  # every request settled before the books are read
        books = asyncio.run(read_books(pg.url, users))
        figures = reconcile(calls, books, done)
        run: dict[str, Any] = {
            "commit": _commit(),
            "python": platform.python_version(),
            "config": {k: v for k, v in vars(args).items() if k not in ("out", "dump")},
            "load_started": round(load_started, 3),
            "load_seconds": round(load_s, 1),
            "total_seconds": round(time.time() - started, 1),
        }
        result = to_json(figures, done, run)
        print(table(result))
        print(f"written: {write(result, args.out)}")
        if args.dump:
            _dump(args.dump, calls)
        return 0 if result["ok"] else 1
    except Exception:
        if app is not None:
            print(f"--- uvicorn log (tail)\n{app.tail()}", file=sys.stderr)
        raise
    finally:
        if app is not None:
            app.stop()
        redis.stop()
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def _load_with_faults(
    load: Load, faults: Faults, args: argparse.Namespace
) -> tuple[list[Call], list[Fault]]:
    fault_task = asyncio.create_task(faults.run(args.lead, args.gap))
    calls = await load.run()
    return calls, await fault_task


def _mix(text: str) -> tuple[tuple[str, float], ...]:
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    mix = tuple((name.strip(), float(share)) for name, share in pairs)
    if not mix or any(name not in ROUTES for name, _ in mix):
        raise SystemExit(f"--mix: routes are {sorted(ROUTES)}, e.g. echo=0.9,missing=0.1")
    return mix


def _dump(path: Path, calls: list[Call]) -> None:
    with path.open("w") as out:
        for call in calls:
            for n, a in enumerate(call.attempts):
                row = {"user": call.user, "route": call.route, "key": call.key, "n": n}
                out.write(json.dumps({**row, **dataclasses.asdict(a)}) + "\n")


def _commit() -> str:
    try:
        out = subprocess.run(  # noqa: S603
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
