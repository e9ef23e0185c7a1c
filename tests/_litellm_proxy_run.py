"""Running the real LiteLLM proxy for the tests: ``litellm --config`` with the credit hook,
in front of the fake provider of ``tests/_llm_upstream.py``, on free ports.

The proxy runs as its users run it, a separate process (here with ``--num_workers 2``: two
worker processes, each with its own hook and its own connections, billing one ledger).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

WORKTREE = Path(__file__).resolve().parent.parent
LITELLM_CLI = Path(sys.executable).with_name("litellm")
UNREACHABLE = "http://127.0.0.1:9/v1"  # connection refused: a deployment that fails at once
#: Modules the proxy server imports that plain ``litellm`` does not install.
_PROXY_NEEDS = ("websockets", "apscheduler", "backoff", "orjson", "fastapi_sso", "multipart")


def proxy_missing() -> str | None:
    """What keeps ``litellm --config`` from starting here (checked without importing the
    proxy, which takes half a minute), or None."""
    absent = [name for name in _PROXY_NEEDS if importlib.util.find_spec(name) is None]
    if absent:
        return "missing " + ", ".join(absent)
    return None if LITELLM_CLI.exists() else f"no {LITELLM_CLI}"


def need_proxy() -> None:
    missing = proxy_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"litellm[proxy] must be installed in CI ({missing})")
        pytest.skip(f"litellm[proxy] is not installed here ({missing})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    with httpx.Client() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(log.read_text(errors="replace")[-3000:])
            try:
                if http.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    raise AssertionError(f"{url} never answered:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def upstream(folder: Path) -> Iterator[str]:
    """The fake provider on a free port; yields its base URL (``http://127.0.0.1:N``)."""
    port = free_port()
    log = folder / "upstream.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_llm_upstream.py")), str(port)],
            cwd=WORKTREE,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(f"{base}/control/calls", proc, log, 30)
        yield base
    finally:
        _stop(proc)


@contextlib.contextmanager
def proxy(
    folder: Path, config: str, hooks: str, env: dict[str, str], *, workers: int = 1
) -> Iterator[str]:
    """``litellm --config`` with ``credit_hooks.py`` beside its config; yields its base URL."""
    (folder / "config.yaml").write_text(config)
    (folder / "credit_hooks.py").write_text(hooks)
    port = free_port()
    full = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join([str(folder), str(WORKTREE)]),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    full.pop("DATABASE_URL", None)  # LiteLLM's own database: not used here
    cmd = [str(LITELLM_CLI), "--config", str(folder / "config.yaml")]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        # uvicorn's supervisor kills a worker that does not answer its health check within
        # 5 s, and a worker importing LiteLLM on a busy machine often cannot: without this,
        # workers are killed and respawned for ever and the proxy never comes up
        cmd += ["--num_workers", str(workers), "--timeout_worker_healthcheck", "300"]
    log = folder / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=folder, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        # the proxy imports a lot: allow 3 minutes on a busy machine
        _wait_up(f"{base}/health/liveliness", proc, log, 180)
        yield base
    finally:
        _stop(proc)
