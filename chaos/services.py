"""Private PostgreSQL and Redis servers for the suite, on free ports in a temporary folder.

Never the shared ones on 5432/6379: the suite kills and restarts these. PostgreSQL refuses to
run as root, so as root ``initdb``/``pg_ctl`` run as the ``postgres`` user (``runuser``) in a
folder that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

SHARED_PORTS = (5432, 6379)


def free_port() -> int:
    """A port nobody listens on, away from the shared services."""
    for _ in range(200):
        port = random.randint(20000, 40000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not _safe(check):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _safe(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except (OSError, subprocess.SubprocessError):
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class PrivatePostgres:
    """A throw-away cluster: ``start``, ``restart(mode)`` (``fast`` or ``immediate``), ``stop``."""

    def __init__(self, folder: Path) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        found = shutil.which("pg_ctl")
        if not bins and not found:
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found")
        self.bin = Path(bins[-1] if bins else str(found)).parent
        self.folder = folder / "pg"
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, timeout=timeout, capture_output=True)  # noqa: S603

    def start(self) -> None:
        self.folder.mkdir(parents=True)
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder.parent, user.pw_uid, user.pw_gid)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c max_connections=60 -c shared_buffers=32MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        wait_for(f"postgres on {self.port}", lambda: _listening(self.port))

    def restart(self, mode: str) -> None:
        """``pg_ctl restart -m fast|immediate``: every connection is dropped; immediate skips
        the shutdown checkpoint, so the restart runs crash recovery."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w", "restart")

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, ...)."""
        try:
            master = int((self.data / "postmaster.pid").read_text().split()[0])
            kids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except (OSError, ValueError, IndexError):
            return []
        return [master, *map(int, kids)]

    def pause(self) -> list[int]:
        """SIGSTOP the whole server (a database that stops answering for a while)."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return pids

    def resume(self, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


class PrivateRedis:
    """One ``redis-server`` without persistence: ``start``, ``kill`` (SIGKILL), ``stop``."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found")
        self.folder = folder / "redis"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.folder)]
        cmd += ["--logfile", str(self.folder / "redis.log")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)  # noqa: S603
        wait_for(f"redis on {self.port}", lambda: _listening(self.port))

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    stop = kill


def check_private(*ports: int) -> None:
    if any(p in SHARED_PORTS for p in ports):
        raise RuntimeError("refusing to fault a shared service port")
