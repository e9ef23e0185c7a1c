"""Processes and services: a server per variant on a free port, the load generator, the
benchmark's own PostgreSQL database and Redis key prefix (created before, removed after)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .common import BenchEnv

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


class ServerFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@contextlib.contextmanager
def server(env: BenchEnv, workdir: Path, timeout: float = 30.0) -> Iterator[tuple[int, Path]]:
    """Run ``benchmarks.serve`` for ``env.variant``; yields its port once /health answers,
    and its log file."""
    port = free_port()
    log_path = workdir / f"server-{env.variant}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [PY, "-m", "benchmarks.serve", str(port)],
            cwd=ROOT,
            env={**os.environ, **env.to_env()},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-1500:]
                raise ServerFailed(f"{env.variant} server did not start: {tail.strip()}")
            time.sleep(0.05)
        yield port, log_path
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def loadgen(config: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run the load generator in its own process; returns its JSON result."""
    with tempfile.NamedTemporaryFile(
        "w", dir=workdir, suffix=".json", delete=False, encoding="utf-8"
    ) as f:
        json.dump(config, f)
        cfg = f.name
    out = cfg.replace(".json", ".out.json")
    try:
        subprocess.run(
            [PY, "-m", "benchmarks.loadgen", cfg, out], cwd=ROOT, check=True, timeout=timeout
        )
        with open(out, encoding="utf-8") as f:
            result: dict[str, Any] = json.load(f)
        return result
    finally:
        for path in (cfg, out):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def run_module(module: str, args: list[str], env: BenchEnv, timeout: float) -> str:
    proc = subprocess.run(
        [PY, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, **env.to_env()},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed: {(proc.stderr or proc.stdout)[-1500:]}")
    return proc.stdout


# ---------------------------------------------------------------------- services


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(base_url: str, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(base_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(base_url, name)


async def drop_database(base_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def seed_floor(url: str, users: list[str]) -> None:
    import asyncpg

    from .apps import FLOOR_DDL, FLOOR_TABLE

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(FLOOR_DDL)
        await conn.executemany(
            f"INSERT INTO {FLOOR_TABLE} (id, balance) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            [(u, 10**15) for u in users],
        )
    finally:
        await conn.close()


async def delete_keys(redis_url: str, prefix: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.delete(*batch)
                batch = []
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


async def service_versions(db_url: str, redis_url: str) -> dict[str, str]:
    import asyncpg
    import redis.asyncio as aioredis

    out: dict[str, str] = {}
    try:
        conn = await asyncpg.connect(db_url)
        try:
            out["postgresql"] = str(await conn.fetchval("SHOW server_version"))
            out["postgresql_synchronous_commit"] = str(
                await conn.fetchval("SHOW synchronous_commit")
            )
        finally:
            await conn.close()
    except Exception as exc:
        out["postgresql"] = f"unreachable: {exc!r}"
    try:
        client = aioredis.Redis.from_url(redis_url)
        try:
            info = await client.info("server")
            out["redis"] = str(info.get("redis_version"))
        finally:
            await client.aclose()
    except Exception as exc:
        out["redis"] = f"unreachable: {exc!r}"
    return out


def machine(db_url: str, redis_url: str) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = {}
    for name in ("starlette", "uvicorn", "asyncpg", "redis", "limits", "slowapi", "PyJWT", "h11"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "event_loop": "uvloop" if _has("uvloop") else "asyncio",
        "http_parser": "httptools" if _has("httptools") else "h11",
        "packages": packages,
        "git_commit": commit,
        "load_average_at_start": loadavg(),
        **asyncio.run(service_versions(db_url, redis_url)),
    }


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages: the machine is shared, so its noise is on record."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
