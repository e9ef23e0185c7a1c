from __future__ import annotations

import pytest

from credit_middleware import Ledger

pytestmark = pytest.mark.anyio


async def test_ledger_fixture_runs_on_both_backends(ledger: Ledger) -> None:
    account, created = await ledger.open_account("a")
    assert created
    assert account.balance_micros == 0
    assert await ledger.schema_version() >= 1
