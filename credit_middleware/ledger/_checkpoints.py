"""Where ``verify`` runs stand (``credit_verify_checkpoints``): ``run``, the walk in progress
(the fence it started from, the last account it finished, its figures so far), rewritten after
every slice so that a run stopped anywhere resumes there; ``clean``, the fence the last run
that found nothing started from, where an incremental run begins."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._executor import Conn, Executor
from .models import Discrepancy

__all__ = ["Checkpoint", "Checkpoints"]

_SAVE = (
    "INSERT INTO credit_verify_checkpoints (name, entry_mark, cursor, accounts, entries, found,"
    " updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET"
    " entry_mark = excluded.entry_mark, cursor = excluded.cursor, accounts = excluded.accounts,"
    " entries = excluded.entries, found = excluded.found, updated_at = excluded.updated_at"
)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    mark: int
    cursor: str
    accounts: int
    entries: int
    found: tuple[Discrepancy, ...]


class Checkpoints:
    def __init__(self, executor: Executor, now_us: Callable[[], int]) -> None:
        self._x = executor
        self._now = now_us

    async def load(self, name: str) -> Checkpoint | None:
        row = await self._x.run(
            lambda conn: conn.fetchrow(
                "SELECT entry_mark, cursor, accounts, entries, found"
                " FROM credit_verify_checkpoints WHERE name = $1",
                name,
            ),
            write=False,
        )
        if row is None:
            return None
        return Checkpoint(
            int(row["entry_mark"]),
            str(row["cursor"] or ""),
            int(row["accounts"]),
            int(row["entries"]),
            tuple(Discrepancy(*d) for d in json.loads(row["found"])),
        )

    async def save(self, name: str, point: Checkpoint) -> None:
        await self._x.run(lambda conn: self._write(conn, name, point))

    async def finish(self, point: Checkpoint) -> None:
        """The run is over: forget it, and record it as the clean one if it found nothing."""

        async def settle(conn: Conn) -> None:
            await conn.execute("DELETE FROM credit_verify_checkpoints WHERE name = 'run'")
            if not point.found:
                await self._write(conn, "clean", point)

        await self._x.run(settle)

    async def _write(self, conn: Conn, name: str, point: Checkpoint) -> None:
        found: Sequence[Any] = [[d.invariant, d.account_id, d.detail] for d in point.found]
        await conn.execute(
            _SAVE,
            name,
            point.mark,
            point.cursor if name == "run" else None,
            point.accounts,
            point.entries,
            json.dumps(found),
            self._now(),
        )
