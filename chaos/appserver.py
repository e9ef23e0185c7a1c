"""The example app under uvicorn with two workers, and the faults aimed at one worker.

uvicorn's supervisor restarts a worker that died (it checks every half second), so a SIGKILL
is followed by a fresh worker on the same socket. An event-loop stall is SIGUSR1 to a worker
(``chaos/asgi.py``, which the workers import, blocks the loop on it). Both faults aim at the
worker holding the most client connections, where the requests in flight are.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from .services import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _established(port: int) -> set[str]:
    """Socket inodes (``socket:[N]``) of the established TCP connections to ``port``."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01":
                found.add(f"socket:[{cols[9]}]")
    return found


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


class AppServer:
    """``uvicorn chaos.asgi:app --workers N`` (the example app) on a free port of 127.0.0.1."""

    def __init__(self, folder: Path, env: Mapping[str, str], workers: int = 2) -> None:
        self.port = free_port()
        self.workers = workers
        self.log = folder / "uvicorn.log"
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "CREDIT_CHAOS": "1"}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        cmd = [sys.executable, "-m", "uvicorn", "chaos.asgi:app", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", str(self.workers)]
        cmd += ["--no-access-log", "--log-level", "warning", "--timeout-graceful-shutdown", "5"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603
                cmd, cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        wait_for("both workers", lambda: len(self.worker_pids()) == self.workers, timeout)
        wait_for("the app's /healthz", self._healthy, timeout)

    def _healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited; see {self.log}:\n{self.tail()}")
        with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as answer:  # noqa: S310
            return bool(answer.status == 200)

    def worker_pids(self) -> list[int]:
        """The live workers (spawned children; not multiprocessing's resource tracker)."""
        if self.proc is None:
            return []
        return [
            pid
            for pid in _children(self.proc.pid)
            if "spawn_main" in (line := _cmdline(pid)) and "resource_tracker" not in line
        ]

    def busiest_worker(self) -> int:
        """The worker with the most established connections on the app's port."""
        return self.workers_by_load()[0]

    def workers_by_load(self) -> list[int]:
        """The workers, most established connections on the app's port first."""
        inodes = _established(self.port)

        def load(pid: int) -> int:
            try:
                fds = list(Path(f"/proc/{pid}/fd").iterdir())
            except OSError:
                return 0
            return sum(1 for fd in fds if _readlink(fd) in inodes)

        return sorted(self.worker_pids(), key=load, reverse=True)

    def kill_worker(self) -> int:
        """SIGKILL the busiest worker; returns its pid (the supervisor starts a new one)."""
        pid = self.busiest_worker()
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_workers(self, old: int, timeout: float = 60.0) -> None:
        """Wait until a full set of workers runs again, without ``old``."""

        def back() -> bool:
            pids = self.worker_pids()
            return len(pids) == self.workers and old not in pids

        wait_for("the supervisor to restart the worker", back, timeout)

    def stall_worker(self, pid: int) -> None:
        """Block a worker's event loop (SIGUSR1, see ``chaos/asgi.py``)."""
        os.kill(pid, signal.SIGUSR1)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        with contextlib.suppress(ProcessLookupError):  # what is left of our own group, by id
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self.proc = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
