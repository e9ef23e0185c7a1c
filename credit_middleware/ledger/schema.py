"""Schema and migrations, for both dialects, recorded in the library's own version table.

The database enforces what it can: unique idempotency keys per account, one trial grant per
account, remaining within [0, amount], the sign of every entry by its kind, and entries and
postings that can be neither updated nor deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import _pgschema
from ._executor import Conn, Dialect, Executor
from ._pgfunctions import (
    PG_DEBIT_MANY,
    PG_DEBIT_VOIDS,
    PG_FUNCTIONS,
    PG_PROVISION,
    PG_PROVISION_V5,
)
from ._pgholds import PG_HOLDS
from ._pgrequests import PG_REQUESTS
from ._scale_schema import scale_schema

VERSION_TABLE = "credit_schema_version"
# A fixed key for pg_advisory_xact_lock, so processes starting at once migrate one at a time.
_ADVISORY_KEY = 0x63726564  # "cred"

_ENTRY_KINDS = "'grant','debit','hold','capture','release','expire','refund','adjust'"

_CORE = """
CREATE TABLE credit_accounts (
    account_id  TEXT PRIMARY KEY,
    tier        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active',
    balance     BIGINT NOT NULL DEFAULT 0 CHECK (balance >= 0),
    held        BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    sweep_at    BIGINT,
    cohort      TEXT,
    metadata    TEXT NOT NULL DEFAULT '{{}}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE credit_grants (
    grant_id        {serial},
    account_id      TEXT NOT NULL REFERENCES credit_accounts(account_id),
    source          TEXT NOT NULL CHECK (source IN ('trial','purchase','promo','admin','refund')),
    amount          BIGINT NOT NULL CHECK (amount > 0),
    remaining       BIGINT NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    priority        INTEGER NOT NULL DEFAULT 0,
    effective_at    BIGINT NOT NULL,
    expires_at      BIGINT,
    idempotency_key TEXT NOT NULL,
    layer           TEXT,
    metadata        TEXT NOT NULL DEFAULT '{{}}',
    created_at      BIGINT NOT NULL,
    UNIQUE (account_id, idempotency_key)
);
CREATE UNIQUE INDEX credit_grants_one_trial ON credit_grants (account_id) WHERE source = 'trial';
CREATE INDEX credit_grants_live ON credit_grants (account_id) WHERE remaining > 0;
CREATE TABLE credit_holds (
    hold_id         {serial},
    account_id      TEXT NOT NULL REFERENCES credit_accounts(account_id),
    amount          BIGINT NOT NULL CHECK (amount > 0),
    status          TEXT NOT NULL CHECK (status IN ('active','captured','released','expired')),
    expires_at      BIGINT NOT NULL,
    idempotency_key TEXT,
    metadata        TEXT NOT NULL DEFAULT '{{}}',
    created_at      BIGINT NOT NULL,
    closed_at       BIGINT
);
CREATE INDEX credit_holds_active ON credit_holds (account_id) WHERE status = 'active';
CREATE TABLE credit_entries (
    entry_id        {serial},
    account_id      TEXT NOT NULL REFERENCES credit_accounts(account_id),
    kind            TEXT NOT NULL CHECK (kind IN ({kinds})),
    amount          BIGINT NOT NULL CHECK (amount >= 0),
    delta           BIGINT NOT NULL,
    held_delta      BIGINT NOT NULL DEFAULT 0,
    balance_after   BIGINT NOT NULL CHECK (balance_after >= 0),
    held_after      BIGINT NOT NULL CHECK (held_after >= 0),
    grant_id        BIGINT REFERENCES credit_grants(grant_id),
    hold_id         BIGINT REFERENCES credit_holds(hold_id),
    ref_entry_id    BIGINT REFERENCES credit_entries(entry_id),
    idempotency_key TEXT,
    layer           TEXT,
    route           TEXT,
    model           TEXT,
    metadata        TEXT NOT NULL DEFAULT '{{}}',
    created_at      BIGINT NOT NULL,
    CHECK (
        (kind IN ('grant','refund') AND amount > 0 AND delta = amount AND held_delta = 0)
        OR (kind IN ('debit','expire') AND amount > 0 AND delta = -amount AND held_delta = 0)
        OR (kind = 'capture' AND delta = -amount AND held_delta < 0)
        OR (kind = 'hold' AND amount > 0 AND delta = 0 AND held_delta = amount)
        OR (kind = 'release' AND amount > 0 AND delta = 0 AND held_delta = -amount)
        OR (kind = 'adjust' AND amount > 0 AND (delta = amount OR delta = -amount)
            AND held_delta = 0)
    )
);
CREATE UNIQUE INDEX credit_entries_key ON credit_entries (account_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX credit_entries_account ON credit_entries (account_id, entry_id);
CREATE INDEX credit_entries_created ON credit_entries (created_at);
CREATE TABLE credit_postings (
    entry_id  BIGINT NOT NULL REFERENCES credit_entries(entry_id),
    grant_id  BIGINT NOT NULL REFERENCES credit_grants(grant_id),
    amount    BIGINT NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (entry_id, grant_id)
);
CREATE INDEX credit_postings_grant ON credit_postings (grant_id);
"""

_PG_APPEND_ONLY = """
CREATE FUNCTION credit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the credit ledger table % is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER credit_entries_append_only BEFORE UPDATE OR DELETE ON credit_entries
    FOR EACH ROW EXECUTE FUNCTION credit_append_only();
CREATE TRIGGER credit_entries_no_truncate BEFORE TRUNCATE ON credit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION credit_append_only();
CREATE TRIGGER credit_postings_append_only BEFORE UPDATE OR DELETE ON credit_postings
    FOR EACH ROW EXECUTE FUNCTION credit_append_only();
CREATE TRIGGER credit_postings_no_truncate BEFORE TRUNCATE ON credit_postings
    FOR EACH STATEMENT EXECUTE FUNCTION credit_append_only();
"""

_SQLITE_APPEND_ONLY = """
CREATE TRIGGER credit_entries_no_update BEFORE UPDATE ON credit_entries
    BEGIN SELECT RAISE(ABORT, 'the credit ledger table credit_entries is append-only'); END;
CREATE TRIGGER credit_entries_no_delete BEFORE DELETE ON credit_entries
    BEGIN SELECT RAISE(ABORT, 'the credit ledger table credit_entries is append-only'); END;
CREATE TRIGGER credit_postings_no_update BEFORE UPDATE ON credit_postings
    BEGIN SELECT RAISE(ABORT, 'the credit ledger table credit_postings is append-only'); END;
CREATE TRIGGER credit_postings_no_delete BEFORE DELETE ON credit_postings
    BEGIN SELECT RAISE(ABORT, 'the credit ledger table credit_postings is append-only'); END;
"""


# The charge contract: the idempotent-request store (a client's Idempotency-Key, its request
# fingerprint and the response it got, kept with the charge that paid for it until it expires)
# and the fences of voided charge ids (an answer of "nothing charged" that a late operation
# must never contradict). Request rows are working state, updated in place; money stays in
# the append-only entries.
_REQUESTS = """
CREATE TABLE credit_requests (
    account_id   TEXT NOT NULL,
    request_key  TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending','done')),
    owner        TEXT NOT NULL,
    lease_until  BIGINT NOT NULL,
    charge_key   TEXT,
    status       INTEGER,
    headers      TEXT,
    body         {blob},
    body_size    BIGINT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (account_id, request_key)
);
CREATE INDEX credit_requests_expiry ON credit_requests (expires_at);
CREATE TABLE credit_voids (
    account_id  TEXT NOT NULL,
    charge_key  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, charge_key)
);
"""


def _requests(dialect: Dialect) -> str:
    return _REQUESTS.format(blob="BYTEA" if dialect == "postgresql" else "BLOB")


# Migration 6: an append-only audit of account changes that move no money (tier changes, the
# tier half of a purchase). Entries stay money moves only (their kinds are a CHECK); this table
# says who changed what, when and why, and its idempotency key makes a retried change a replay.
_EVENTS = """
CREATE TABLE credit_account_events (
    event_id        {serial},
    account_id      TEXT NOT NULL REFERENCES credit_accounts(account_id),
    kind            TEXT NOT NULL CHECK (kind IN ('tier')),
    old_value       TEXT NOT NULL,
    new_value       TEXT NOT NULL CHECK (length(new_value) BETWEEN 1 AND 64),
    entry_id        BIGINT REFERENCES credit_entries(entry_id),
    idempotency_key TEXT NOT NULL,
    layer           TEXT,
    reason          TEXT,
    metadata        TEXT NOT NULL DEFAULT '{{}}',
    created_at      BIGINT NOT NULL,
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX credit_account_events_account ON credit_account_events (account_id, event_id);
"""

_PG_EVENTS_APPEND_ONLY = """
CREATE TRIGGER credit_account_events_append_only BEFORE UPDATE OR DELETE
    ON credit_account_events FOR EACH ROW EXECUTE FUNCTION credit_append_only();
CREATE TRIGGER credit_account_events_no_truncate BEFORE TRUNCATE ON credit_account_events
    FOR EACH STATEMENT EXECUTE FUNCTION credit_append_only();
"""

_SQLITE_EVENTS_APPEND_ONLY = """
CREATE TRIGGER credit_account_events_no_update BEFORE UPDATE ON credit_account_events
    BEGIN SELECT RAISE(ABORT, 'the credit ledger table credit_account_events is append-only');
    END;
CREATE TRIGGER credit_account_events_no_delete BEFORE DELETE ON credit_account_events
    BEGIN SELECT RAISE(ABORT, 'the credit ledger table credit_account_events is append-only');
    END;
"""


def _events(dialect: Dialect) -> str:
    serial = (
        "BIGSERIAL PRIMARY KEY" if dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    )
    guard = _PG_EVENTS_APPEND_ONLY if dialect == "postgresql" else _SQLITE_EVENTS_APPEND_ONLY
    return _EVENTS.format(serial=serial) + guard


def _core(dialect: Dialect) -> str:
    serial = (
        "BIGSERIAL PRIMARY KEY" if dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    )
    return _CORE.format(serial=serial, kinds=_ENTRY_KINDS)


# Every debit updates its account's row and its grant's ``remaining``. PostgreSQL can update a
# row in place (a HOT update: no new index entries, old versions pruned as the page is read)
# only when no index involves a changed column, and a partial index's predicate counts: with
# ``credit_grants_live`` (``WHERE remaining > 0``) no grant update was ever HOT. Each debit then
# added an entry to all four of the table's indexes and left a dead row version behind, which
# every later lookup of that account stepped over until a vacuum (measured: 0 of 152,809
# updates HOT, the debit's server time growing with the account's debits). The per-account
# lookups are served by the (account_id, idempotency_key) index; a lower fillfactor keeps room
# on each page for the next version of these constantly updated rows. SQLite updates in place
# and keeps its index.
_PG_HOT_UPDATES = """
DROP INDEX IF EXISTS credit_grants_live;
ALTER TABLE credit_grants SET (fillfactor = 50);
ALTER TABLE credit_accounts SET (fillfactor = 50);
"""


def migrations(dialect: Dialect) -> Sequence[tuple[int, str, str]]:
    """(version, name, SQL) in order. Append new versions; never edit a released one."""
    if dialect == "postgresql":
        return [
            (1, "ledger tables", _core(dialect) + _PG_APPEND_ONLY),
            (2, "server-side debit", PG_FUNCTIONS),
            (3, "server-side provisioning", PG_PROVISION),
            (4, "idempotent requests and charge voids", _requests(dialect) + PG_DEBIT_VOIDS),
            (5, "provisioning: unusual cases to the generic path", PG_PROVISION_V5),
            (6, "account events (tier audit)", _events(dialect)),
            (7, "group commit; server-side hold and capture", PG_DEBIT_MANY + PG_HOLDS),
            (8, "in-place (HOT) updates of grants and accounts", _PG_HOT_UPDATES),
            (9, "one money path: requests charged and settled server-side", PG_REQUESTS),
            (10, "operators at scale: search indexes, rollups, checkpoints", scale_schema(dialect)),
        ]
    return [
        (1, "ledger tables", _core(dialect) + _SQLITE_APPEND_ONLY),
        (4, "idempotent requests and charge voids", _requests(dialect)),
        (6, "account events (tier audit)", _events(dialect)),
        (10, "operators at scale: search indexes, rollups, checkpoints", scale_schema(dialect)),
    ]


async def _applied(conn: Conn) -> set[int]:
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
    )
    rows = await conn.fetch(f"SELECT version FROM {VERSION_TABLE}")
    return {int(r["version"]) for r in rows}


async def migrate(executor: Executor, now_us: int) -> list[int]:
    """Apply every missing migration; returns the versions applied. Safe to run concurrently.

    On PostgreSQL the ledger's schema is made first, and a ledger from before the library
    kept a schema of its own is moved into it (see ``_pgschema``), once."""
    schema, former = executor.schema, []
    if schema is not None and executor.chose_schema:

        async def placed(conn: Conn) -> bool:
            return await _pgschema.exists(conn, schema, VERSION_TABLE)

        if not await executor.run(placed, write=False):
            former = await executor.former_schemas()

    async def apply(conn: Conn) -> list[int]:
        applied_now: list[int] = []
        if conn.dialect == "postgresql":
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADVISORY_KEY)
            if schema is not None:
                scripts = [sql for _, _, sql in migrations("postgresql")]
                await _pgschema.settle(conn, schema, former, VERSION_TABLE, scripts)
        done = await _applied(conn)
        for version, name, sql in migrations(conn.dialect):
            if version in done:
                continue
            await conn.executescript(sql)
            await conn.execute(
                f"INSERT INTO {VERSION_TABLE} (version, name, applied_at) VALUES ($1, $2, $3)",
                version,
                name,
                now_us,
            )
            applied_now.append(version)
        return applied_now

    return await executor.run(apply)


async def current_version(executor: Executor) -> int:
    async def read(conn: Conn) -> int:
        try:
            value = await conn.fetchval(f"SELECT MAX(version) FROM {VERSION_TABLE}")
        except Exception:  # no version table yet means version 0
            return 0
        return int(value or 0)

    return await executor.run(read, write=False)
