"""The core must import and work on the embedded default with no optional extra installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    for name in ("asyncpg", "redis", "jwt", "litellm", "prometheus_client"):
        sys.modules[name] = None  # importing it now raises ImportError, as if not installed
    import credit_middleware as cm
    from credit_middleware import ConfigurationError, Ledger, Provisioner

    async def main(path):
        async with Ledger(f"sqlite:///{path}") as ledger:
            await ledger.migrate()
            await Provisioner(ledger).ensure_account("u", layer="request")
            assert (await ledger.debit("u", "0.001")).available == cm.from_micros(4_999_000)
            assert (await ledger.verify()).ok
        try:
            Ledger("postgresql://x@127.0.0.1/db")
        except ConfigurationError as exc:
            assert "credit-middleware[postgres]" in str(exc), exc
        else:
            raise AssertionError("expected ConfigurationError")
        print("ok")

    asyncio.run(main(sys.argv[1]))
    """
).replace("cm.from_micros", "__import__('credit_middleware.money').money.from_micros")


def test_core_without_any_extra(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "c.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


#: the optional drivers and integrations: each extra's own import, and what they pull in
OPTIONAL = (
    "asyncpg", "redis", "jwt", "litellm", "prometheus_client", "databases", "aiosqlite",
    "cryptography", "openai", "httpx", "fastapi", "sqlalchemy",
)  # fmt: skip


def test_importing_the_package_loads_no_optional_driver() -> None:
    """With every extra installed (as here), ``import credit_middleware`` (and the CLI's
    module) still imports none of them: each is loaded only by the backend that uses it."""
    code = (
        "import sys, credit_middleware, credit_middleware.cli\n"
        f"print(' '.join(sorted(m for m in {OPTIONAL!r} if m in sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
    for name in ("asyncpg", "redis", "jwt"):  # they are installed: the test means something
        __import__(name)
