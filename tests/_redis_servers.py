"""Throw-away Redis topologies for the tests: a 3-node Redis Cluster, and a master with a replica
watched by a Sentinel. Real ``redis-server`` processes on free ports in a temporary folder,
stopped (and their files removed with the folder) at the end."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SERVICE = "credittest"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, below 55535."""
    for _ in range(200):
        port = random.randint(21000, 30000)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def cli(port: int, *args: str, timeout: float = 10) -> str:
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return out.stdout.strip()


def wait_for(what: str, check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (subprocess.SubprocessError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def require_binaries() -> str | None:
    """None when redis-server and redis-cli are here; otherwise what is missing."""
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    return ", ".join(missing) or None


class Servers:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str, config: str | None = None) -> None:
        cmd = ["redis-server"]
        if config is not None:
            path = self.folder / f"{port}.conf"
            path.write_text(config)
            cmd.append(str(path))
        cmd += ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(self.folder), "--logfile", str(self.folder / f"{port}.log"), *args]
        self.procs[port] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        wait_for(f"redis on {port}", lambda: cli(port, "ping") == "PONG")

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(10)

    def stop_all(self) -> None:
        for port in list(self.procs):
            self.kill(port)


@contextmanager
def redis_cluster(folder: Path) -> Iterator[list[int]]:
    """Three masters sharing the 16384 slots; yields their ports."""
    servers = Servers(folder)
    try:
        ports = []
        for n in range(3):
            port = cluster_port()
            servers.start(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(folder / f"nodes-{n}.conf"),
            )
            ports.append(port)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
        for port in ports:
            wait_for(
                "cluster_state:ok", lambda p=port: "cluster_state:ok" in cli(p, "cluster", "info")
            )
        yield ports
    finally:
        servers.stop_all()


@contextmanager
def redis_sentinel(folder: Path) -> Iterator[tuple[Servers, int, int, int]]:
    """A master, its replica and one Sentinel (quorum 1, quick failover).

    Yields (servers, master port, replica port, sentinel port)."""
    servers = Servers(folder)
    try:
        master, replica, sentinel = cluster_port(), cluster_port(), cluster_port()
        servers.start(master)
        servers.start(replica, "--replicaof", "127.0.0.1", str(master))
        wait_for(
            "the replica to sync",
            lambda: "master_link_status:up" in cli(replica, "info", "replication"),
        )
        servers.start(
            sentinel,
            "--sentinel",
            config=(
                f"sentinel monitor {SERVICE} 127.0.0.1 {master} 1\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            ),
        )
        wait_for(
            "the sentinel to see the replica",
            lambda: str(replica) in cli(sentinel, "sentinel", "replicas", SERVICE),
        )
        yield servers, master, replica, sentinel
    finally:
        servers.stop_all()


def sentinel_master_port(sentinel: int) -> int:
    return int(cli(sentinel, "sentinel", "get-master-addr-by-name", SERVICE).split()[-1])
