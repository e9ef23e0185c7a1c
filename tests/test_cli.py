"""The operator's CLI, on both backends, through its real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from credit_middleware.cli import main


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
        ("grant", "bad\x00id", "1", "--create"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
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


def test_demo_runs_clean() -> None:
    demo = Path(__file__).parents[1] / "examples" / "demo.py"
    proc = subprocess.run(
        [sys.executable, str(demo)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for expected in ("verify: ok", "POST /auth/register                201", " 402 ", " 429 "):
        assert expected in proc.stdout
