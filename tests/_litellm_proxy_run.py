"""Running the real LiteLLM proxy for the tests (``benchmarks/litellm_proxy_run.py`` starts
it) in front of the fake provider of ``tests/_llm_upstream.py``, on free ports; skipped where
``litellm[proxy]`` is missing, failed under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.litellm_proxy_run import LITELLM_CLI, WORKTREE, free_port, proxy, stop, wait_up

__all__ = ["UNREACHABLE", "need_proxy", "proxy", "upstream"]

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
        wait_up(f"{base}/control/calls", proc, log, 30)
        yield base
    finally:
        stop(proc)
