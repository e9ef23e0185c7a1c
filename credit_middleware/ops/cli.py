"""``credit-middleware``: migrate, balance, history, grant, purchase, tier, refund, verify, purge,
report.

Every command but ``migrate`` works on an existing ledger only: it never creates a database
(a SQLite file that does not exist is refused, not made) and never upgrades one silently. Every
command that names an account refuses one that does not exist (exit 2), except ``grant
--create``. Bad input is a usage error (exit 2), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from .._version import __version__
from ..errors import AccountNotFound, CreditError
from ..ledger import Ledger, Receipt, TierChange
from ..limits.ratelimit import TIER_TTL
from . import audit as _cli_audit
from .db import check_schema, database_url
from .report import balance_json, build_report, render_text

_PAGE = 1000  # the ledger's largest page; --limit beyond it pages through
_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_MAX_ID = 2**63 - 1  # entry ids are 64-bit signed integers in both databases

# --help is read in a terminal: plain text, no reST markup
_DESCRIPTION = """\
Operate a credit-middleware ledger: migrate it, read balances and history, grant, purchase,
refund, change tiers, verify the invariants, purge expired idempotency records and report
usage.

Every command but migrate works on an existing, migrated ledger only: it never creates a
database and never upgrades one silently. A command that names an account refuses one that
does not exist (exit 2), except grant --create.
"""
_EPILOG = """\
examples:
  credit-middleware migrate --database-url postgresql://app@db/app
  credit-middleware grant alice 10 --create --expires-in 30d --key order-77
  credit-middleware balance alice --json
  credit-middleware history alice --limit 20
  credit-middleware verify --incremental --timeout 30

exit status: 0 done, 1 verify found a discrepancy, 2 bad input or a refused command.
"""


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` → timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30d, 12h or 90m")
    value = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError("the duration must be positive")
    return value


def entry_id(text: str) -> int:
    """An entry id: a whole number from 1 to 2**63 - 1 (a larger one cannot exist)."""
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an entry id (a whole number)") from None
    if not 1 <= value <= _MAX_ID:
        raise argparse.ArgumentTypeError(f"{text!r} is not an entry id (1 to {_MAX_ID})")
    return value


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _emit_receipt(args: argparse.Namespace, receipt: Receipt, verb: str) -> int:
    data = {**receipt.entry.to_json(), "replayed": receipt.replayed}
    done = f"already {verb}" if receipt.replayed else verb
    text = f"{done} {receipt.entry.amount} to {args.account}; available {receipt.available}"
    _emit(args, data, text)
    return 0


async def _migrate(ledger: Ledger, args: argparse.Namespace) -> int:
    applied = await ledger.migrate()
    version = await ledger.schema_version()
    _emit(
        args,
        {"applied": applied, "version": version},
        f"schema at version {version}" + (f" (applied {applied})" if applied else " (up to date)"),
    )
    return 0


async def _balance(ledger: Ledger, args: argparse.Namespace) -> int:
    bal = await ledger.balance(args.account)
    data = balance_json(bal, priority=True)
    grants = data["grants"]
    lines = [
        f"{bal.account_id} ({bal.tier}): available {bal.available}"
        f" (spendable {bal.spendable}, held {bal.held})"
    ]
    for g in grants:
        lines.append(
            f"  grant {g['grant_id']:>6} {g['source']:<8} {g['remaining']:>14} of"
            f" {g['amount']:<14} expires {g['expires_at'] or 'never'}"
        )
    _emit(args, data, "\n".join(lines))
    return 0


async def _history(ledger: Ledger, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1_000_000:
        raise ValueError("--limit must be between 1 and 1000000")
    if await ledger.get_account(args.account) is None:  # as balance does: not "no entries"
        raise AccountNotFound(args.account)
    entries: list[Any] = []
    # ids stay below 2**62 (the ledger refuses larger ones): a larger bound is no bound at all
    before = args.before if args.before is None or args.before < 2**62 else None
    while len(entries) < args.limit:  # the ledger serves pages of at most 1000, newest first
        want = min(_PAGE, args.limit - len(entries))
        page = await ledger.history(args.account, limit=want, before=before)
        entries += page
        if len(page) < want:
            break
        before = page[-1].entry_id
    lines = [
        f"{e.entry_id:>8} {e.created_at:%Y-%m-%d %H:%M:%S} {e.kind:<8}"
        f" {e.amount:>14} -> {e.balance_after:>14}  {e.layer or e.route or e.model or ''}"
        for e in entries
    ]
    if len(entries) == args.limit and entries:
        lines.append(f"(older entries may follow: --before {entries[-1].entry_id})")
    _emit(args, [e.to_json() for e in entries], "\n".join(lines) or "no entries")
    return 0


async def _grant(ledger: Ledger, args: argparse.Namespace) -> int:
    if args.create:
        await ledger.open_account(args.account, tier=args.tier)
    receipt = await ledger.grant(
        args.account,
        args.amount,
        source=args.source,
        key=args.key,
        priority=args.priority,
        expires_in=args.expires_in,
        layer="cli",
    )
    return _emit_receipt(args, receipt, "granted")


async def _refund(ledger: Ledger, args: argparse.Namespace) -> int:
    receipt = await ledger.refund(
        args.account, args.amount, entry_id=args.entry, key=args.key, layer="cli"
    )
    return _emit_receipt(args, receipt, "refunded")


def _tier_text(change: TierChange) -> str:
    done = "already set" if change.replayed else "set"
    return (
        f"{done} tier of {change.account_id}: {change.old_tier} -> {change.new_tier}"
        f" (event {change.event_id}); running apps apply it within {TIER_TTL:g} s"
    )


async def _tier(ledger: Ledger, args: argparse.Namespace) -> int:
    change = await ledger.set_tier(
        args.account, args.tier, key=args.key, reason=args.reason, layer="cli"
    )
    _emit(args, change.to_json(), _tier_text(change))
    return 0


async def _purchase(ledger: Ledger, args: argparse.Namespace) -> int:
    bought = await ledger.purchase(
        args.account,
        args.amount,
        key=args.key,
        tier=args.tier,
        expires_in=args.expires_in,
        reason=args.reason,
        layer="cli",
    )
    change = bought.tier_change
    data = {
        **bought.receipt.entry.to_json(),
        "replayed": bought.replayed,
        "available": str(bought.receipt.available),
        "tier_change": change.to_json() if change else None,
    }
    verb = "already bought" if bought.replayed else "bought"
    text = f"{verb} {bought.receipt.entry.amount} for {args.account}"
    text += f"; available {bought.receipt.available}"
    _emit(args, data, text + ("\n" + _tier_text(change) if change else ""))
    return 0


async def _verify(ledger: Ledger, args: argparse.Namespace) -> int:
    return await _cli_audit.verify(ledger, args, _emit)


async def _purge(ledger: Ledger, args: argparse.Namespace) -> int:
    return await _cli_audit.purge(ledger, args, _emit)


async def _report(ledger: Ledger, args: argparse.Namespace) -> int:
    report = await build_report(ledger, since=args.since, until=args.until, top=args.top)
    print(report.to_json_text() if args.json else render_text(report))
    return 0


def parse_time(text: str) -> datetime:
    """``2026-11-01`` or an ISO timestamp; without a zone, UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-01") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        default=None,
        help="ledger database (default: $CREDIT_DATABASE_URL, then an existing ./credits.db)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--timeout",
        type=_cli_audit.seconds,
        default=None,
        help="statement timeout, seconds (default: $CREDIT_TIMEOUT, then 5)",
    )
    parser = argparse.ArgumentParser(
        prog="credit-middleware",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", parents=[common], help="create or upgrade the schema")
    p = sub.add_parser("balance", parents=[common], help="an account's balance and grants")
    p.add_argument("account")
    p = sub.add_parser("history", parents=[common], help="an account's entries, newest first")
    p.add_argument("account")
    p.add_argument("--limit", type=int, default=50, help="how many (pages through beyond 1000)")
    p.add_argument("--before", type=entry_id, default=None, help="entries older than this entry id")
    p = sub.add_parser("grant", parents=[common], help="add credits to an account")
    p.add_argument("account")
    p.add_argument("amount", help="credits, e.g. 10 or 2.5")
    p.add_argument("--expires-in", type=parse_duration, default=None, help="e.g. 30d")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--key", default=None, help="idempotency key")
    p.add_argument("--source", default="admin", choices=["purchase", "promo", "admin"])
    p.add_argument("--create", action="store_true", help="open the account if missing")
    p.add_argument("--tier", default="default", help="tier for --create")
    p = sub.add_parser("tier", parents=[common], help="change an account's tier (audited)")
    p.add_argument("account")
    p.add_argument("tier", help="the new tier, e.g. pro")
    p.add_argument("--reason", default=None, help="why (kept in the audit trail)")
    p.add_argument("--key", default=None, help="idempotency key")
    p = sub.add_parser(
        "purchase", parents=[common], help="grant purchased credits, optionally upgrading the tier"
    )
    p.add_argument("account")
    p.add_argument("amount", help="credits, e.g. 10 or 2.5")
    p.add_argument("--key", required=True, help="the payment or order id (idempotency key)")
    p.add_argument("--tier", default=None, help="the tier to move the account to")
    p.add_argument("--expires-in", type=parse_duration, default=None, help="e.g. 365d")
    p.add_argument("--reason", default=None, help="kept in the audit trail")
    p = sub.add_parser("refund", parents=[common], help="return credits to an account")
    p.add_argument("account")
    p.add_argument("amount")
    p.add_argument("--entry", type=entry_id, default=None, help="the charge being refunded")
    p.add_argument("--key", default=None, help="idempotency key")
    _cli_audit.add_commands(sub, common)
    p = sub.add_parser("report", parents=[common], help="provisioning and usage report")
    p.add_argument("--since", type=parse_time, default=None, help="e.g. 2026-11-01 (UTC)")
    p.add_argument("--until", type=parse_time, default=None, help="exclusive")
    p.add_argument("--top", type=int, default=10, help="how many top consumers")
    return parser


_COMMANDS: dict[str, Callable[[Ledger, argparse.Namespace], Awaitable[int]]] = {
    "migrate": _migrate,
    "balance": _balance,
    "history": _history,
    "grant": _grant,
    "purchase": _purchase,
    "tier": _tier,
    "refund": _refund,
    "verify": _verify,
    "purge": _purge,
    "report": _report,
}


async def _run(args: argparse.Namespace) -> int:
    url = database_url(args.database_url, args.command)
    ledger = Ledger(url, timeout=_cli_audit.statement_timeout(args.timeout))
    try:
        if args.command != "migrate":
            await check_schema(ledger, url)
        return await _COMMANDS[args.command](ledger, args)
    finally:
        await ledger.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (CreditError, ValueError) as exc:
        if args.json:
            print(json.dumps({"error": type(exc).__name__, "detail": str(exc)}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
