"""Group commit for PostgreSQL: concurrent charges and settlements of one process share one
transaction.

Every metered request's charge (``credit_begin()``, keyed or not, debit or hold) and its
settlement (``credit_finish()``: a capture, a stored response) go through here. The first
operation to arrive is sent at once, alone (no added latency when the load is light).
Operations that arrive while ``max_inflight`` batches are on their way queue up, and the next
batch takes them all (up to ``max_batch``): one round trip and one commit (one WAL flush) for
the lot, through ``credit_many()``, which runs the very same functions for each in turn. Each
caller gets its own result only once the batch's commit is durable; a refusal (insufficient
credits, a voided charge id, a key in flight) is that operation's own answer. Operations are
sent sorted by account (stable: one account's operations keep their order), so concurrent
batches lock rows in one order and cannot deadlock; an account with an operation on its way
waits for it (a later batch could otherwise commit first and reorder them). If the batch fails
as a whole for a reason that is not the connection (one operation's constraint, say), each is
tried again alone, so that one bad operation never refuses another; a lost connection reaches
every operation as an unknown outcome, which the caller settles by its charge id. Each batch
on its way has a lane, and each lane the connection the executor keeps for it
(``Executor.held``): no pool round per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BackendUnavailable
from ._executor import Executor, Row

__all__ = ["Batcher", "DebitItem", "Op"]

_MANY = "SELECT * FROM credit_many(" + ", ".join(f"${i}" for i in range(1, 20)) + ")"
_BEGIN = "SELECT * FROM credit_begin(" + ", ".join(f"${i}" for i in range(1, 15)) + ")"
_FINISH = "SELECT * FROM credit_finish(" + ", ".join(f"${i}" for i in range(1, 17)) + ")"


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a batch: ``begin`` (``credit_begin``) or ``finish``
    (``credit_finish``). The three numbers ``n1``..``n3`` are, for a begin, the hold's expiry,
    the lease's end and the request's expiry; for a finish, the hold to capture, the stored
    body's size and the request's expiry."""

    op: str
    account_id: str
    request: str | None
    fingerprint: str | None
    owner: str | None
    kind: str | None
    amount: int | None
    now: int
    n1: int | None
    n2: int | None
    n3: int | None
    layer: str | None
    route: str | None
    model: str | None
    metadata: str | None
    code: int | None = None
    headers: str | None = None
    body: bytes | None = None
    keep: bool | None = None

    def columns(self) -> tuple[Any, ...]:
        """The operation as one row of ``credit_many()``'s arrays."""
        return (
            self.op, self.account_id, self.request, self.fingerprint, self.owner, self.kind,
            self.amount, self.now, self.n1, self.n2, self.n3, self.layer, self.route,
            self.model, self.metadata, self.code, self.headers, self.body, self.keep,
        )  # fmt: skip

    def call(self) -> tuple[str, tuple[Any, ...]]:
        """The statement that runs the operation alone, and its arguments."""
        if self.op == "begin":
            return _BEGIN, (
                self.account_id, self.request, self.fingerprint, self.owner, self.kind,
                self.amount, self.now, self.n1, self.n2, self.n3, self.layer, self.route,
                self.model, self.metadata,
            )  # fmt: skip
        return _FINISH, (
            self.account_id, self.request, self.owner, self.now, self.n1, self.amount,
            self.code, self.headers, self.body, self.n2, self.n3, bool(self.keep), self.layer,
            self.route, self.model, self.metadata,
        )  # fmt: skip


def DebitItem(
    account_id: str,
    micros: int,
    now: int,
    key: str | None,
    layer: str | None,
    route: str | None,
    model: str | None,
    metadata: str,
) -> Op:
    """A plain debit (``Ledger.debit``'s fast path)."""
    return Op("begin", account_id, None, None, key, "debit", micros, now, None, None, None,
              layer, route, model, metadata)  # fmt: skip


class Batcher:
    """Queues operations and sends them in batches over the executor's pool."""

    def __init__(self, executor: Executor, *, max_batch: int = 64, max_inflight: int = 2) -> None:
        self._x = executor
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: list[tuple[Op, asyncio.Future[Row]]] = []
        self._inflight = 0
        # one lane per batch on its way, each with the connection the executor keeps for it
        self._lanes = list(range(max_inflight))
        self._busy: dict[str, int] = {}  # accounts with an operation on its way -> how many
        self._tasks: set[asyncio.Task[None]] = set()
        #: batches sent and operations in them (for benchmarks and tests)
        self.batches = 0
        self.items = 0

    async def run(self, item: Op) -> Row:
        aid = item.account_id
        if not self._queue and self._inflight < self._max_inflight and aid not in self._busy:
            # nothing to group with: send it now, from the caller's own task
            self._inflight += 1
            lane = self._lanes.pop()
            self._busy[aid] = 1
            self.batches += 1
            self.items += 1
            try:
                return await self._one(item, lane)
            finally:
                self._inflight -= 1
                self._lanes.append(lane)
                self._release([aid])
                self._kick()
        future: asyncio.Future[Row] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._kick()
        return await future

    debit = run  # the name it had when it carried debits only

    def _take(self) -> list[tuple[Op, asyncio.Future[Row]]]:
        """The next batch, in arrival order, leaving queued the operations of accounts that
        have one on its way: a later batch could commit before it and reorder them."""
        batch: list[tuple[Op, asyncio.Future[Row]]] = []
        left: list[tuple[Op, asyncio.Future[Row]]] = []
        for queued in self._queue:
            if len(batch) < self._max_batch and queued[0].account_id not in self._busy:
                batch.append(queued)
            else:
                left.append(queued)
        self._queue = left
        for item, _ in batch:
            self._busy[item.account_id] = self._busy.get(item.account_id, 0) + 1
        return batch

    def _release(self, accounts: list[str]) -> None:
        for aid in accounts:
            n = self._busy.get(aid, 0) - 1
            if n > 0:
                self._busy[aid] = n
            else:
                self._busy.pop(aid, None)

    def _kick(self) -> None:
        # a new batch only if one could start: some queued operation's account is free
        if self._inflight < self._max_inflight and any(
            item.account_id not in self._busy for item, _ in self._queue
        ):
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        lane = self._lanes.pop()
        try:
            while batch := self._take():
                try:
                    await self._send(batch, lane)
                finally:
                    self._release([item.account_id for item, _ in batch])
        finally:
            self._inflight -= 1
            self._lanes.append(lane)
            self._kick()

    async def _send(self, batch: list[tuple[Op, asyncio.Future[Row]]], lane: int) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            if len(batch) == 1:
                rows: Sequence[Row] = [await self._one(batch[0][0], lane)]
            else:
                rows = await self._many([item for item, _ in batch], lane)
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, BackendUnavailable):
                for _, future in batch:
                    _fail(future, exc)
                return
            for item, future in batch:  # one bad item must not refuse the others
                try:
                    _done(future, await self._one(item, lane))
                except Exception as own:
                    _fail(future, own)
            return
        for (_, future), row in zip(batch, rows, strict=True):
            _done(future, row)

    async def _one(self, item: Op, lane: int) -> Row:
        sql, args = item.call()
        async with self._x.held(lane) as conn:
            row = await conn.fetchrow(sql, *args)
        assert row is not None
        return row

    async def _many(self, items: list[Op], lane: int) -> list[Row]:
        order = sorted(range(len(items)), key=lambda i: items[i].account_id)
        sent = [items[i] for i in order]
        columns = list(zip(*(item.columns() for item in sent), strict=True))
        async with self._x.held(lane) as conn:
            rows = await conn.fetch(_MANY, *(list(column) for column in columns))
        if len(rows) != len(items):
            raise RuntimeError(f"credit_many answered {len(rows)} rows for {len(items)}")
        out: list[Row | None] = [None] * len(items)
        for row in rows:
            out[order[int(row["o_index"]) - 1]] = row
        assert all(r is not None for r in out)
        return [r for r in out if r is not None]

    async def aclose(self) -> None:
        """Wait for the batches on their way (their callers are owed an answer)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))


DebitBatcher = Batcher


def _done(future: asyncio.Future[Row], row: Row) -> None:
    if not future.done():
        future.set_result(row)


def _fail(future: asyncio.Future[Row], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
