"""Run the real LiteLLM proxy (``litellm --config``) as its users run it: a separate process,
with a ``credit_hooks.py`` beside its config, on a free port. Shared by the proxy tests and the
budget benchmark.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

WORKTREE = Path(__file__).resolve().parent.parent
LITELLM_CLI = Path(sys.executable).with_name("litellm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    """Until ``url`` answers 200; fails with the log's tail if the process dies or time runs out."""
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


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (the proxy and its workers), SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
        wait_up(f"{base}/health/liveliness", proc, log, 180)
        yield base
    finally:
        stop(proc)
