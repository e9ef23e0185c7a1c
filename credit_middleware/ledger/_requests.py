"""SQL of the charge contract: idempotent requests and voided charge ids, on one connection.

A request row binds a client's ``Idempotency-Key`` (per account) to one request fingerprint, the
charge that paid for it and, once served, the response to replay. Its owner is the charge id of
the attempt serving it; a lease says how long that attempt may take before a retry may take over
(a crashed process never answers). Lock order everywhere: the account row, then the request row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import IdempotencyInFlight, IdempotencyMismatch
from ._executor import Conn, Row
from ._tx import ENTRY_COLS

REQUEST_COLS = (
    "account_id, request_key, fingerprint, state, owner, lease_until, charge_key, status,"
    " headers, body, body_size, created_at, expires_at"
)
_SELECT = f"SELECT {REQUEST_COLS} FROM credit_requests WHERE account_id = $1 AND request_key = $2"
_LOCK = {"postgresql": _SELECT + " FOR UPDATE", "sqlite": _SELECT}


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The response a request got, kept for exact retries. ``body`` is None when it was larger
    than the store's limit (``size`` says how large it was)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    size: int


@dataclass(frozen=True, slots=True)
class Claim:
    """What claiming a key found: ``new`` (this attempt owns it now), ``resumed`` (a crashed
    attempt's charge stands and this one serves it), or ``replay`` (served already)."""

    state: str
    charge_key: str | None = None
    response: StoredResponse | None = None


MISMATCH = "already used for a different request (method, path or body)"
IN_FLIGHT = "the first request is still being served"


def stored(row: Row) -> StoredResponse:
    headers = tuple((str(k), str(v)) for k, v in json.loads(row["headers"] or "[]"))
    body = row["body"]
    return StoredResponse(
        int(row["status"]),
        headers,
        None if body is None else bytes(body),
        int(row["body_size"] or 0),
    )


async def claim(
    conn: Conn,
    now: int,
    account_id: str,
    key: str,
    fingerprint: str,
    owner: str,
    lease_until: int,
    expires_at: int,
) -> Claim:
    """Take the key for this attempt, or say why not (raises on a mismatch or one in flight)."""
    inserted = await conn.fetchrow(
        "INSERT INTO credit_requests (account_id, request_key, fingerprint, state, owner,"
        " lease_until, created_at, expires_at) VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7)"
        " ON CONFLICT (account_id, request_key) DO NOTHING RETURNING request_key",
        account_id,
        key,
        fingerprint,
        owner,
        lease_until,
        now,
        expires_at,
    )
    if inserted is not None:
        return Claim("new")
    row = await conn.fetchrow(_LOCK[conn.dialect], account_id, key)
    if row is None:  # deleted (freed, purged) since the insert saw it: the key is free
        return await claim(conn, now, account_id, key, fingerprint, owner, lease_until, expires_at)
    if int(row["expires_at"]) <= now and (row["state"] == "done" or row["charge_key"] is None):
        # forgotten: the key is new again (an unfinished attempt's standing charge is not
        # forgotten with it: it stays the key's, for the retry that takes it over below)
        await conn.execute(
            "UPDATE credit_requests SET fingerprint = $3, state = 'pending', owner = $4,"
            " lease_until = $5, charge_key = NULL, status = NULL, headers = NULL, body = NULL,"
            " body_size = NULL, created_at = $6, expires_at = $7"
            " WHERE account_id = $1 AND request_key = $2",
            account_id,
            key,
            fingerprint,
            owner,
            lease_until,
            now,
            expires_at,
        )
        return Claim("new")
    if row["fingerprint"] != fingerprint:
        raise IdempotencyMismatch(account_id, key, MISMATCH)
    if row["state"] == "done":
        return Claim("replay", row["charge_key"], stored(row))
    if int(row["lease_until"]) > now:
        raise IdempotencyInFlight(account_id, key, IN_FLIGHT)
    await conn.execute(
        "UPDATE credit_requests SET owner = $3, lease_until = $4,"
        " expires_at = CASE WHEN expires_at < $5 THEN $5 ELSE expires_at END"
        " WHERE account_id = $1 AND request_key = $2",
        account_id,
        key,
        owner,
        lease_until,
        expires_at,
    )
    return Claim("resumed", row["charge_key"])


async def set_charge(conn: Conn, account_id: str, key: str, charge_key: str) -> None:
    await conn.execute(
        "UPDATE credit_requests SET charge_key = $3 WHERE account_id = $1 AND request_key = $2",
        account_id,
        key,
        charge_key,
    )


async def owned(conn: Conn, account_id: str, key: str, owner: str) -> Row | None:
    """The request row, locked, if ``owner`` still holds it."""
    row = await conn.fetchrow(_LOCK[conn.dialect], account_id, key)
    return row if row is not None and row["owner"] == owner else None


async def free(conn: Conn, account_id: str, key: str) -> None:
    await conn.execute(
        "DELETE FROM credit_requests WHERE account_id = $1 AND request_key = $2", account_id, key
    )


async def store(conn: Conn, account_id: str, key: str, response: StoredResponse) -> None:
    """Keep the response for exact retries, as long as the key lives (``ttl`` from its
    claim): the row is updated in place, no indexed column changes."""
    await conn.execute(
        "UPDATE credit_requests SET state = 'done', status = $3, headers = $4, body = $5,"
        " body_size = $6 WHERE account_id = $1 AND request_key = $2",
        account_id,
        key,
        response.status,
        headers_text(response),
        response.body,
        response.size,
    )


def headers_text(response: StoredResponse) -> str:
    return json.dumps([list(h) for h in response.headers])


async def charge_entry(conn: Conn, account_id: str, charge_key: str) -> Row | None:
    """The entry a charge id produced (its debit or hold), if any."""
    return await conn.fetchrow(
        f"SELECT {ENTRY_COLS} FROM credit_entries WHERE account_id = $1 AND idempotency_key = $2",
        account_id,
        charge_key,
    )


async def voided(conn: Conn, account_id: str, charge_key: str) -> bool:
    """Whether the charge id was voided (its caller answered "nothing charged")."""
    row = await conn.fetchrow(
        "SELECT 1 AS voided FROM credit_voids WHERE account_id = $1 AND charge_key = $2",
        account_id,
        charge_key,
    )
    return row is not None


async def fence(conn: Conn, now: int, account_id: str, charge_key: str, reason: str) -> None:
    """Void a charge id that never applied: any later operation with it is refused. A key its
    attempt claimed without a charge (a handler-billed route) is free again; one it took over
    with an earlier attempt's charge keeps that charge, its lease ended (the next retry
    serves it): the key's charge is never lost with an attempt."""
    await conn.execute(
        "DELETE FROM credit_requests WHERE account_id = $1 AND owner = $2 AND state = 'pending'"
        " AND charge_key IS NULL",
        account_id,
        charge_key,
    )
    await release_lease(conn, now, account_id, charge_key)
    await conn.execute(
        "INSERT INTO credit_voids (account_id, charge_key, reason, created_at)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, charge_key) DO NOTHING",
        account_id,
        charge_key,
        reason,
        now,
    )


async def release_lease(conn: Conn, now: int, account_id: str, owner: str) -> None:
    """End the lease of the unfinished requests ``owner`` holds (it will not finish them):
    the next retry takes their charge over at once."""
    await conn.execute(
        "UPDATE credit_requests SET lease_until = $3"
        " WHERE account_id = $1 AND owner = $2 AND state = 'pending' AND lease_until > $3",
        account_id,
        owner,
        now,
    )


async def taken_over(conn: Conn, account_id: str, charge_key: str) -> bool:
    """Whether a request paid by this charge is now served by another attempt (a retry took
    it over): the charge is that attempt's to settle, not its first owner's to reverse."""
    row = await conn.fetchrow(
        "SELECT owner FROM credit_requests WHERE account_id = $1 AND charge_key = $2"
        " AND owner <> $2",
        account_id,
        charge_key,
    )
    return row is not None


async def free_charged(conn: Conn, account_id: str, charge_key: str) -> None:
    """Free the unfinished request a reversed charge paid for (its key is new again)."""
    await conn.execute(
        "DELETE FROM credit_requests WHERE account_id = $1 AND charge_key = $2"
        " AND owner = $2 AND state = 'pending'",
        account_id,
        charge_key,
    )


async def renew(conn: Conn, account_id: str, key: str, owner: str, lease_until: int) -> bool:
    """Extend the lease of the request ``owner`` still serves; False if it lost it."""
    row = await conn.fetchrow(
        "UPDATE credit_requests SET lease_until = $4,"
        " expires_at = CASE WHEN expires_at < $4 THEN $4 ELSE expires_at END"
        " WHERE account_id = $1 AND request_key = $2 AND owner = $3 AND state = 'pending'"
        " RETURNING request_key",
        account_id,
        key,
        owner,
        lease_until,
    )
    return row is not None


_PURGE = (
    "DELETE FROM credit_requests WHERE ctid = ANY(ARRAY("
    " SELECT ctid FROM credit_requests WHERE expires_at <= $1 LIMIT $2{lock}))"
    " AND expires_at <= $1"
)


async def purge(conn: Conn, now: int, limit: int = 1000) -> int:
    """Delete up to ``limit`` expired request rows in one statement; returns how many.

    Set-based (the rows found together and deleted together), not one round trip per row.
    On PostgreSQL a row that a request is claiming right now (locked) is waited for at most
    50 ms; then the batch is taken again without the rows locked at that moment (``SKIP
    LOCKED``, which costs a lock per row: only then), so the purge never queues behind a
    request. A row renewed meanwhile is no longer expired and stays.
    """
    if conn.dialect == "postgresql":
        await conn.execute("SET LOCAL lock_timeout = '50ms'")
        await conn.execute("SAVEPOINT purge")
        try:
            return await conn.execute_count(_PURGE.format(lock=""), now, limit)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != "55P03":  # lock_not_available
                raise
        await conn.execute("ROLLBACK TO SAVEPOINT purge")
        return await conn.execute_count(_PURGE.format(lock=" FOR UPDATE SKIP LOCKED"), now, limit)
    return await conn.execute_count(
        "DELETE FROM credit_requests WHERE rowid IN ("
        " SELECT rowid FROM credit_requests WHERE expires_at <= $1 LIMIT $2)",
        now,
        limit,
    )
