"""The operator's CLI, on both backends, through its real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from credit_middleware.ops.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def js(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out = run(capsys, *args, "--json")
    assert code == 0, out
    return json.loads(out)


def test_grant_balance_history_refund_verify(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--database-url", ledger_url)
    assert js(capsys, "migrate", *db)["version"] >= 1
    first = js(
        capsys, "grant", "alice", "10", "--create", "--key", "buy-1", "--expires-in", "30d", *db
    )
    again = js(capsys, "grant", "alice", "10", "--create", "--key", "buy-1", *db)
    assert first["replayed"] is False and again["replayed"] is True
    assert again["entry_id"] == first["entry_id"]
    bal = js(capsys, "balance", "alice", *db)
    assert bal["available"] == "10" and bal["grants"][0]["expires_at"] is not None
    refund = js(capsys, "refund", "alice", "1.5", "--key", "r-1", *db)
    assert refund["kind"] == "refund" and refund["amount"] == "1.5"
    history = js(capsys, "history", "alice", *db)
    assert [e["kind"] for e in history] == ["refund", "grant"]
    report = js(capsys, "verify", *db)
    assert report == {"ok": True, "accounts": 1, "entries": 2, "discrepancies": []}
    code, text = run(capsys, "balance", "alice", *db)
    assert code == 0 and "available 11.5" in text


@pytest.mark.parametrize(
    "args",
    [
        ("grant", "bob", "-5", "--create"),
        ("grant", "bob", "NaN", "--create"),
        ("grant", "bob", "0.0000001", "--create"),
        ("grant", "nobody", "1"),  # no account and no --create
        ("balance", "nobody"),
        ("history", "nobody"),  # as balance: an error, not "no entries"
        ("refund", "nobody", "1"),
        ("tier", "nobody", "pro"),
        ("grant", "bad\x00id", "1", "--create"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    js(capsys, "migrate", "--database-url", sqlite_url)
    code, out = run(capsys, *args, "--database-url", sqlite_url, "--json")
    assert code == 2
    assert "error" in json.loads(out)
    assert js(capsys, "verify", "--database-url", sqlite_url)["entries"] == 0


def test_bad_duration_is_a_usage_error(sqlite_url: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["grant", "a", "1", "--expires-in", "soon", "--database-url", sqlite_url])
    assert info.value.code == 2


def test_verify_exits_1_on_a_broken_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    cli = [sys.executable, "-m", "credit_middleware"]
    subprocess.run([*cli, "migrate", "--database-url", url], check=True)
    subprocess.run([*cli, "grant", "a", "3", "--create", "--database-url", url], check=True)
    import sqlite3

    with sqlite3.connect(tmp_path / "c.db") as conn:
        # the schema refuses a grant holding more than it was given...
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE credit_grants SET remaining = remaining + 1000000")
        # ...but someone can still edit a balance behind the ledger's back
        conn.execute("UPDATE credit_accounts SET balance = balance + 1000000")
    proc = subprocess.run(
        [*cli, "verify", "--database-url", url], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout
    assert "balance 4 but grants hold 3" in proc.stdout


def test_database_url_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CREDIT_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    js(capsys, "migrate")
    assert (tmp_path / "env.db").exists()


#: what `make demo` does not install: the walkthrough must run without any of it
NOT_IN_THE_DEMO = (
    "litellm", "redis", "asyncpg", "databases", "aiosqlite", "fastapi", "openai", "sqlalchemy",
    "uvicorn", "hypothesis", "selenium", "fastapi_users", "slowapi",
)  # fmt: skip


def test_demo_runs_clean_with_only_what_make_demo_installs(tmp_path: Path) -> None:
    """The walkthrough on the package, its jwt and prometheus extras and httpx alone (as if
    nothing else were installed), leaving nothing behind in the temporary folder."""
    demo = Path(__file__).parents[2] / "examples" / "demo.py"
    code = (
        "import runpy, sys\n"
        f"for name in {NOT_IN_THE_DEMO!r}:\n"
        "    sys.modules[name] = None  # importing it raises ImportError, as if not installed\n"
        f"runpy.run_path({str(demo)!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for expected in ("verify: ok", "POST /auth/register                201", " 402 ", " 429 "):
        assert expected in proc.stdout
    assert proc.stderr == ""  # no warning about what the demo does not use
    assert list(tmp_path.iterdir()) == []  # its ledger folder is gone


def _ledger_with_account(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, ...]:
    db = ("--database-url", url)
    js(capsys, "migrate", *db)
    js(capsys, "grant", "alice", "10", "--create", "--tier", "trial", "--key", "g1", *db)
    return db


def test_tier_changes_what_balance_shows(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _ledger_with_account(ledger_url, capsys)
    assert js(capsys, "balance", "alice", *db)["tier"] == "trial"
    change = js(capsys, "tier", "alice", "pro", "--reason", "upgraded by support", *db)
    assert (change["old_tier"], change["new_tier"], change["layer"]) == ("trial", "pro", "cli")
    assert change["reason"] == "upgraded by support"
    assert js(capsys, "balance", "alice", *db)["tier"] == "pro"
    code, text = run(capsys, "tier", "alice", "team", "--key", "t-2", *db)
    assert code == 0 and "pro -> team" in text and "within 60 s" in text
    again = js(capsys, "tier", "alice", "team", "--key", "t-2", *db)
    assert again["replayed"] is True
    assert js(capsys, "verify", *db)["ok"] is True


def test_purchase_grants_and_upgrades_once(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _ledger_with_account(ledger_url, capsys)
    args = ("purchase", "alice", "25", "--tier", "pro", "--key", "order-7", "--expires-in", "365d")
    first = js(capsys, *args, *db)
    again = js(capsys, *args, *db)
    assert first["replayed"] is False and again["replayed"] is True
    assert first["tier_change"]["new_tier"] == "pro"
    assert again["entry_id"] == first["entry_id"]
    bal = js(capsys, "balance", "alice", *db)
    assert (bal["tier"], bal["available"]) == ("pro", "35")
    code, out = run(capsys, "purchase", "alice", "26", "--tier", "pro", "--key", "order-7", *db)
    assert code == 2 and "order-7" in out
    assert js(capsys, "balance", "alice", *db)["available"] == "35"
    assert js(capsys, "verify", *db)["ok"] is True


@pytest.mark.parametrize(
    "args",
    [
        ("tier", "nobody", "pro"),
        ("tier", "alice", ""),
        ("tier", "alice", "x" * 65),
        ("tier", "alice", "pro\x00"),
        ("tier", "alice", "pro", "--reason", "r\x00"),
        ("purchase", "nobody", "5", "--tier", "pro", "--key", "o-1"),
        ("purchase", "alice", "-5", "--tier", "pro", "--key", "o-1"),
        ("purchase", "alice", "5", "--tier", "", "--key", "o-1"),
    ],
)
def test_bad_tier_or_purchase_exits_2_and_writes_nothing(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    db = _ledger_with_account(sqlite_url, capsys)
    before = js(capsys, "balance", "alice", *db), js(capsys, "history", "alice", *db)
    code, out = run(capsys, *args, *db, "--json")
    assert code == 2 and json.loads(out)["detail"]
    assert (js(capsys, "balance", "alice", *db), js(capsys, "history", "alice", *db)) == before


def test_purchase_needs_a_key(sqlite_url: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["purchase", "alice", "5", "--database-url", sqlite_url])
    assert info.value.code == 2


def test_no_ledger_here_is_refused_and_nothing_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CREDIT_DATABASE_URL", raising=False)
    for args in (("verify",), ("balance", "alice"), ("grant", "alice", "1", "--create")):
        code, out = run(capsys, *args)
        assert code == 2
        assert "no ledger here" in out and "--database-url" in out and "migrate" in out
    missing = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    code, out = run(capsys, "verify", "--database-url", missing)
    assert code == 2 and "no SQLite ledger" in out
    assert list(tmp_path.iterdir()) == []  # no credits.db, no elsewhere.db
    assert js(capsys, "migrate")["version"] >= 1  # migrate is how a ledger is made
    assert (tmp_path / "credits.db").exists()
    code, out = run(capsys, "verify")
    assert code == 0 and "the ledger is empty" in out


def test_verify_on_an_unmigrated_database_says_so(
    ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if ledger_url.startswith("sqlite"):  # an existing SQLite file that holds no ledger
        import sqlite3

        path = tmp_path / "other.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE unrelated (x INTEGER)")
        ledger_url = f"sqlite:///{path}"
    code, out = run(capsys, "verify", "--database-url", ledger_url)
    assert code == 2
    assert "holds no credit ledger" in out and "credit-middleware migrate" in out
    assert "ok" not in out.split()


def test_history_pages_through_beyond_1000(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--database-url", sqlite_url)
    js(capsys, "migrate", *db)
    js(capsys, "grant", "alice", "10000", "--create", "--key", "g", *db)

    async def spend() -> None:
        from credit_middleware import Ledger

        async with Ledger(sqlite_url) as ledger:
            for i in range(1204):
                await ledger.debit("alice", "0.001", key=f"d{i}")

    import asyncio

    asyncio.run(spend())
    entries = js(capsys, "history", "alice", "--limit", "1500", *db)
    ids = [e["entry_id"] for e in entries]
    assert len(ids) == 1205 and ids == sorted(ids, reverse=True) and len(set(ids)) == 1205
    assert len(js(capsys, "history", "alice", "--limit", "1001", *db)) == 1001
    code, text = run(capsys, "history", "alice", "--limit", "3", *db)
    assert code == 0 and f"--before {ids[2]}" in text
    older = js(capsys, "history", "alice", "--limit", "2", "--before", str(ids[2]), *db)
    assert [e["entry_id"] for e in older] == ids[3:5]


def test_unknown_accounts_are_one_error_everywhere(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    js(capsys, "migrate", "--database-url", sqlite_url)
    for command in (
        ("balance", "ghost"),
        ("history", "ghost"),
        ("refund", "ghost", "1"),
        ("tier", "ghost", "pro"),
        ("purchase", "ghost", "5", "--key", "p-1"),
        ("grant", "ghost", "5"),
    ):
        code, out = run(capsys, *command, "--database-url", sqlite_url)
        assert (code, out.strip()) == (2, "error: no credit account 'ghost'"), command


@pytest.mark.parametrize(
    "args",
    [
        ("history", "alice", "--before", str(2**63)),
        ("history", "alice", "--before", str(10**30)),
        ("history", "alice", "--before", "0"),
        ("refund", "alice", "1", "--entry", str(2**63)),
        ("refund", "alice", "1", "--entry", "-1"),
        ("refund", "alice", "1", "--entry", "x"),
    ],
)
def test_ids_out_of_range_are_a_usage_error_not_a_traceback(
    ledger_url: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    db = _ledger_with_account(ledger_url, capsys)
    with pytest.raises(SystemExit) as info:
        main([*args, *db])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "is not an entry id" in err and "Traceback" not in err
    assert js(capsys, "verify", *db)["entries"] == 1  # the grant alone: nothing moved
    largest = str(2**63 - 1)  # the largest id is a valid one: it just names no entry
    code, out = run(capsys, "history", "alice", "--before", largest, *db)
    assert code == 0 and "grant" in out


def test_help_is_plain_text_and_version_is_known(capsys: pytest.CaptureFixture[str]) -> None:
    from credit_middleware import __version__

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":class:" not in text
    assert "migrate" in text and "exit status" in text
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"credit-middleware {__version__}"
    proc = subprocess.run(
        [sys.executable, "-m", "credit_middleware", "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith(__version__)
