"""The CLI's long-running commands: ``verify`` (in slices, with progress, resumable and
incremental) and ``purge`` (the idempotency store's expired records, for cron), and the
statement timeout every command honours (``--timeout``, else ``$CREDIT_TIMEOUT``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, TextIO

from ..ledger import Ledger
from ..ledger._audit import VerifyProgress

__all__ = ["add_commands", "purge", "statement_timeout", "verify"]

DEFAULT_TIMEOUT = 5.0
_PURGE_BATCH = 5000


def statement_timeout(given: float | None) -> float:
    """``--timeout``, else ``$CREDIT_TIMEOUT``, else 5 seconds."""
    if given is not None:
        return given
    raw = os.environ.get("CREDIT_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        return seconds(raw)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"CREDIT_TIMEOUT={raw!r} cannot be used: {exc}") from None


def seconds(text: str) -> float:
    """A positive number of seconds (at most a day)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError("a timeout is more than 0 and at most 86400 seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError("give a number from 1 to 1000000")
    return value


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "verify",
        parents=[common],
        help="check the ledger's invariants, in slices (exit 1 if broken)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--incremental",
        action="store_true",
        help="only the accounts changed since the last clean verify",
    )
    mode.add_argument(
        "--resume", action="store_true", help="continue an interrupted verify where it stopped"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr (default: when stderr is a terminal)",
    )
    p = sub.add_parser(
        "purge",
        parents=[common],
        help="forget expired idempotent requests, in batches (for cron)",
    )
    p.add_argument(
        "--batch", type=_count, default=_PURGE_BATCH, help="records per statement (default 5000)"
    )
    p.add_argument(
        "--max-seconds",
        type=seconds,
        default=None,
        help="stop after this long (default: when none is left)",
    )


class _Meter:
    """Progress on one line of a terminal, redrawn at most a few times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown = 0.0
        self.drawn = False

    def __call__(self, p: VerifyProgress) -> None:
        now = time.monotonic()
        if now - self.shown < 0.25:
            return
        self.shown = now
        share = f" ({100 * p.accounts // p.total}%)" if p.total else ""
        self.stream.write(
            f"\rverify: {p.accounts:,} of ~{p.total:,} accounts{share}, {p.entries:,} entries,"
            f" {p.discrepancies} discrepancies "
        )
        self.stream.flush()
        self.drawn = True

    def end(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


async def verify(ledger: Ledger, args: argparse.Namespace, emit: Any) -> int:
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    meter = _Meter(sys.stderr) if show else None
    try:
        report = await ledger.verify(
            incremental=args.incremental, resume=args.resume, checkpoint=True, progress=meter
        )
    finally:
        if meter is not None:
            meter.end()
    data = report.to_json()
    lines = [
        f"invariant {d.invariant} broken on {d.account_id!r}: {d.detail}"
        for d in report.discrepancies
    ]
    what = {"incremental": " changed since the last clean verify", "resumed": " (resumed)"}
    if report.ok and report.accounts == 0 and report.entries == 0 and report.scope == "full":
        lines.append("ok, but the ledger is empty: 0 accounts, 0 entries (is this the right one?)")
    else:
        lines.append(
            ("ok" if report.ok else "FAILED")
            + f": {report.accounts} accounts{what.get(report.scope, '')}, {report.entries}"
            f" entries, {len(report.discrepancies)} discrepancies"
        )
    emit(args, data, "\n".join(lines))
    return 0 if report.ok else 1


async def purge(ledger: Ledger, args: argparse.Namespace, emit: Any) -> int:
    started = time.monotonic()
    purged, batches = 0, 0
    while True:
        n = await ledger.purge_requests(limit=args.batch)
        purged += n
        batches += 1
        if n < args.batch:
            break
        if args.max_seconds is not None and time.monotonic() - started >= args.max_seconds:
            break
    took = time.monotonic() - started
    done = purged == 0 or n < args.batch
    data = {"purged": purged, "batches": batches, "seconds": round(took, 3), "done": done}
    rest = "" if done else "; more remain (run it again)"
    emit(args, data, f"purged {purged} expired requests in {took:.2f} s{rest}")
    return 0
