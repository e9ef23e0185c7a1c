"""Charges whose answer was lost, resolved by their id: found (and served), reversed, or fenced.

When a caller loses track of a charge (a timeout, a lost connection), it asks here, under the
account's lock, what applied, before it answers its client: :meth:`resolve_request` for a
request's begin (its claim and charge), :meth:`resolve_charge` for a plain charge. What did not
apply is fenced (``credit_voids``), so that an operation still on its way can never apply it
afterwards; asked to, what did apply is reversed (never a charge a retry has taken over: that
one is the retry's to settle). Mixed into :class:`~credit_middleware.ledger.Ledger`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, TypeVar

from ..errors import AccountNotFound
from ..money import check_account_id, check_key
from . import _ops, _requests
from ._executor import Conn
from ._standing import charged
from ._standing import reverse as take_back
from ._tx import lock
from .contract import RequestStart
from .models import Entry, Receipt

__all__ = ["ChargeResolver"]

T = TypeVar("T")


class ChargeResolver:
    """Mixed into :class:`~credit_middleware.ledger.Ledger`."""

    if TYPE_CHECKING:

        async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, write: bool = True) -> T: ...

        def now_us(self) -> int: ...

        @staticmethod
        def _receipt(out: _ops.Outcome) -> Receipt: ...

    async def resolve_request(
        self,
        account_id: str,
        key: str,
        *,
        owner: str,
        reverse: bool = False,
        reason: str = "unknown",
    ) -> RequestStart | None:
        """Whether :meth:`begin_request` by ``owner`` for ``key`` applied: what it started
        (``new`` with its charge, or ``resumed`` with the charge it took over), or None. With
        None, or with ``reverse=True``, nothing of it stands afterwards: ``owner`` is fenced
        (a late begin is refused), a charge of its own is reversed (an audited refund or
        release) and the key freed, and a charge it took over stays with the key, its lease
        ended, for the next retry."""
        account_id = check_account_id(account_id)
        key, owner = check_key(key), check_key(owner)
        now = self.now_us()

        async def resolve(conn: Conn) -> RequestStart | None:
            try:
                ctx = await lock(conn, account_id, now)
            except AccountNotFound:
                await _requests.fence(conn, now, account_id, owner, reason[:255])
                return None
            row = await _requests.owned(conn, account_id, key, owner)
            if row is None:  # never applied, or applied and taken over by a retry since
                if await _requests.charge_entry(conn, account_id, owner) is None:
                    await _requests.fence(conn, now, account_id, owner, reason[:255])
                return None
            charge_key = row["charge_key"]
            if reverse:
                if charge_key == owner:
                    entry = await _requests.charge_entry(conn, account_id, owner)
                    if entry is not None:
                        await take_back(conn, now, account_id, Entry.from_row(entry), reason)
                if charge_key is None or charge_key == owner:
                    await _requests.free(conn, account_id, key)
                await _requests.fence(conn, now, account_id, owner, reason[:255])
                return None
            if charge_key is None:
                return RequestStart("new", charge_key=owner)
            receipt = await charged(conn, ctx, charge_key)
            state: Literal["new", "resumed"] = "new" if charge_key == owner else "resumed"
            return RequestStart(state, receipt, charge_key=charge_key)

        return await self._run(resolve)

    async def resolve_charge(
        self, account_id: str, charge_key: str, *, reverse: bool = False, reason: str = "unknown"
    ) -> Receipt | None:
        """Whether charge id ``charge_key`` applied: its receipt if it stands (``replayed``:
        this call did not apply it), else None, and the id is fenced for good. With
        ``reverse=True`` a standing charge is reversed (an audited refund or release, freeing
        the request it paid for) and that receipt returned; not, though, a charge a retry took
        over with its request: that is the retry's to settle.
        """
        account_id = check_account_id(account_id)
        charge_key = check_key(charge_key)
        now = self.now_us()

        async def resolve(conn: Conn) -> Receipt | None:
            try:
                ctx = await lock(conn, account_id, now)
            except AccountNotFound:
                await _requests.fence(conn, now, account_id, charge_key, reason[:255])
                return None
            row = await _requests.charge_entry(conn, account_id, charge_key)
            if row is None:
                await _requests.fence(conn, now, account_id, charge_key, reason[:255])
                return None
            if not reverse or await _requests.taken_over(conn, account_id, charge_key):
                return await charged(conn, ctx, charge_key)
            out = await take_back(conn, now, account_id, Entry.from_row(row), reason)
            await _requests.free_charged(conn, account_id, charge_key)
            if out is None:
                return await charged(conn, ctx, charge_key)
            return self._receipt(out)

        return await self._run(resolve)
