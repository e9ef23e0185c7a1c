"""Migration 9: what the operator's reads need once the ledger is large.

- Indexes for the admin searches: accounts by creation (the newest first), by e-mail and by
  e-mail domain (expressions over the metadata, the same text the searches use), and by id
  prefix (PostgreSQL: in byte order, whatever the database's collation).
- The rollup tables (``_rollups``): per-day aggregates of the entries, per-account usage per
  day and route, per-account facts and their aggregates per creation day, layer, cohort. A
  report reads these (a few rows per day) instead of every entry.
- A sequence column on PostgreSQL's accounts (``rollup_seq``, filled for new accounts; older
  ones are walked once by the rollups' backfill) so that the rollups find new accounts by a
  fence, as they find new entries; SQLite's ``rowid`` serves the same purpose.
- ``verify``'s checkpoints (``_verify``): where an interrupted run stopped, and the fence of
  the last clean run, from which an incremental run checks only the accounts changed since.

Nothing here touches the hot path's statements: the new indexes are on columns a debit never
updates (PostgreSQL's in-place updates of accounts stay in place), and the rollups are kept by
a job, outside the debit's transaction.
"""

from __future__ import annotations

from ._executor import Dialect

__all__ = ["domain_key", "email_key", "scale_schema"]

_JSON = {
    "postgresql": "(metadata::jsonb ->> '{field}')",
    "sqlite": "json_extract(metadata, '$.{field}')",
}


def _field(dialect: Dialect, name: str) -> str:
    return _JSON[dialect].format(field=name)


def _after_at(dialect: Dialect, expr: str) -> str:
    """The part of an e-mail after its last ``@`` (NULL without one)."""
    if dialect == "postgresql":
        return f"substring({expr} from '@([^@]*)$')"
    return (
        f"CASE WHEN instr({expr}, '@') > 0 THEN"
        f" substr({expr}, length(rtrim({expr}, replace({expr}, '@', ''))) + 1) END"
    )


def email_key(dialect: Dialect) -> str:
    """The account's e-mail, lowercased: the expression the e-mail index holds."""
    return f"lower({_field(dialect, 'email')})"


def domain_key(dialect: Dialect) -> str:
    """The account's e-mail domain, lowercased: ``email_domain`` (what the provisioner keeps),
    else the part of ``email`` after its last ``@``."""
    email = _field(dialect, "email")
    return f"lower(COALESCE({_field(dialect, 'email_domain')}, {_after_at(dialect, email)}))"


_ROLLUPS = """
CREATE TABLE credit_rollup_state (
    name          TEXT PRIMARY KEY,
    entry_mark    BIGINT NOT NULL DEFAULT 0,
    account_mark  BIGINT NOT NULL DEFAULT 0,
    backfill      TEXT,
    updated_at    BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE credit_rollup_days (
    day        BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    route      TEXT NOT NULL,
    linked     SMALLINT NOT NULL,
    n          BIGINT NOT NULL DEFAULT 0,
    amount_hi  BIGINT NOT NULL DEFAULT 0,
    amount_lo  BIGINT NOT NULL DEFAULT 0,
    out_hi     BIGINT NOT NULL DEFAULT 0,
    out_lo     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, kind, route, linked)
);
CREATE TABLE credit_rollup_grants (
    day        BIGINT NOT NULL,
    source     TEXT NOT NULL,
    n          BIGINT NOT NULL DEFAULT 0,
    amount_hi  BIGINT NOT NULL DEFAULT 0,
    amount_lo  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, source)
);
CREATE TABLE credit_rollup_usage (
    account_id   TEXT NOT NULL,
    day          BIGINT NOT NULL,
    route        TEXT NOT NULL,
    calls        BIGINT NOT NULL DEFAULT 0,
    charged_hi   BIGINT NOT NULL DEFAULT 0,
    charged_lo   BIGINT NOT NULL DEFAULT 0,
    refunded_hi  BIGINT NOT NULL DEFAULT 0,
    refunded_lo  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day, route)
);
CREATE INDEX credit_rollup_usage_day ON credit_rollup_usage (day);
CREATE TABLE credit_rollup_facts (
    account_id     TEXT PRIMARY KEY,
    created_at     BIGINT NOT NULL,
    day            BIGINT NOT NULL,
    layer          TEXT NOT NULL,
    cohort         TEXT NOT NULL,
    decided        SMALLINT NOT NULL,
    trial          SMALLINT NOT NULL,
    denied         SMALLINT NOT NULL,
    exhausted      SMALLINT NOT NULL,
    purchased      SMALLINT NOT NULL,
    trial_expired  SMALLINT NOT NULL DEFAULT 0,
    consumer       SMALLINT NOT NULL DEFAULT 0,
    used_hi        BIGINT NOT NULL DEFAULT 0,
    used_lo        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX credit_rollup_facts_day ON credit_rollup_facts (day);
CREATE INDEX credit_rollup_facts_top ON credit_rollup_facts (used_hi DESC, used_lo DESC, account_id)
    WHERE consumer = 1;
CREATE TABLE credit_rollup_accounts (
    day        BIGINT NOT NULL,
    layer      TEXT NOT NULL,
    cohort     TEXT NOT NULL,
    decided    SMALLINT NOT NULL,
    n          BIGINT NOT NULL DEFAULT 0,
    trials     BIGINT NOT NULL DEFAULT 0,
    denied     BIGINT NOT NULL DEFAULT 0,
    exhausted  BIGINT NOT NULL DEFAULT 0,
    purchased  BIGINT NOT NULL DEFAULT 0,
    consumers  BIGINT NOT NULL DEFAULT 0,
    used_hi    BIGINT NOT NULL DEFAULT 0,
    used_lo    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, layer, cohort, decided)
);
CREATE TABLE credit_verify_checkpoints (
    name        TEXT PRIMARY KEY,
    entry_mark  BIGINT NOT NULL,
    cursor      TEXT,
    accounts    BIGINT NOT NULL DEFAULT 0,
    entries     BIGINT NOT NULL DEFAULT 0,
    found       TEXT NOT NULL DEFAULT '[]',
    updated_at  BIGINT NOT NULL
);
"""

# Accounts made before this migration have no rollup_seq: the rollups' backfill walks them
# once by id (``backfill`` = the last id walked, '' to start); adding a column without a
# default rewrites nothing, and the default then numbers every new account.
_PG = """
CREATE INDEX credit_accounts_id_prefix ON credit_accounts (account_id COLLATE "C");
CREATE SEQUENCE credit_accounts_rollup_seq;
ALTER TABLE credit_accounts ADD COLUMN rollup_seq BIGINT;
ALTER TABLE credit_accounts ALTER COLUMN rollup_seq
    SET DEFAULT nextval('credit_accounts_rollup_seq');
ALTER SEQUENCE credit_accounts_rollup_seq OWNED BY credit_accounts.rollup_seq;
CREATE INDEX credit_accounts_by_rollup_seq ON credit_accounts (rollup_seq);
INSERT INTO credit_rollup_state (name, backfill) VALUES ('rollup', '');
"""
_SQLITE = "INSERT INTO credit_rollup_state (name, backfill) VALUES ('rollup', NULL);"


def scale_schema(dialect: Dialect) -> str:
    """Migration 9's SQL for ``dialect``."""
    indexes = f"""
CREATE INDEX credit_accounts_created ON credit_accounts (created_at);
CREATE INDEX credit_accounts_email ON credit_accounts ({email_key(dialect)}, created_at);
CREATE INDEX credit_accounts_domain ON credit_accounts ({domain_key(dialect)}, created_at);
"""
    return indexes + _ROLLUPS + (_PG if dialect == "postgresql" else _SQLITE)
