"""Which ledger the CLI opens, and refusing to create or upgrade one by accident.

Run in the wrong directory, the CLI used to create ``./credits.db``, migrate it and report
"ok: 0 accounts". Now every command but ``migrate`` needs an existing, migrated ledger.
"""

from __future__ import annotations

import os

from ..errors import CreditError
from ..ledger import Ledger

__all__ = ["DEFAULT_URL", "CliError", "check_schema", "database_url"]

DEFAULT_URL = "sqlite:///./credits.db"


class CliError(CreditError):
    """A command that cannot run as asked (no ledger, an unmigrated one)."""


def database_url(given_url: str | None, command: str) -> str:
    """--database-url, then $CREDIT_DATABASE_URL, then ./credits.db; a SQLite file that does
    not exist is refused unless the command is ``migrate`` (it would be created empty)."""
    url = given_url or os.environ.get("CREDIT_DATABASE_URL") or DEFAULT_URL
    given = bool(given_url or os.environ.get("CREDIT_DATABASE_URL"))
    path = _sqlite_path(url)
    if command != "migrate" and path is not None and not os.path.exists(path):
        if not given:
            raise CliError(
                f"no ledger here: {os.path.abspath(path)} does not exist. Pass --database-url"
                " (or set CREDIT_DATABASE_URL) to name the ledger, or run"
                " `credit-middleware migrate` to create one here."
            )
        raise CliError(
            f"no SQLite ledger at {path!r}; run `credit-middleware migrate --database-url"
            f" {url}` to create it"
        )
    return url


def _sqlite_path(url: str) -> str | None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("sqlite", "sqlite+aiosqlite"):
        return None
    path = rest[1:] if rest.startswith("/") else rest  # sqlite:///rel.db, sqlite:////abs.db
    path = path.split("?", 1)[0]
    return None if path in ("", ":memory:") else path


def _shown(url: str) -> str:
    """The URL without a password."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if sep and at and ":" in creds:
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


async def check_schema(ledger: Ledger, url: str) -> None:
    """Refuse a database with no ledger, or with a schema older than this library's."""
    pending = await ledger.pending_migrations()
    if pending and await ledger.schema_version() == 0:
        raise CliError(
            f"the database {_shown(url)} holds no credit ledger (never migrated);"
            " run `credit-middleware migrate` first"
        )
    if pending:
        raise CliError(
            f"the ledger's schema lacks migrations {pending}; run"
            " `credit-middleware migrate` (the app also migrates when it starts)"
        )
