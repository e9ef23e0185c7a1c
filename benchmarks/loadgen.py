"""The load generator, a process of its own: ``python -m benchmarks.loadgen CONFIG OUT``.

Raw asyncio sockets, HTTP/1.1 keep-alive, one request in flight per connection. Two kinds of
phase:

- ``closed``: each connection sends its next request when the previous answer is in (at one
  connection this is the plain per-request latency; at many it measures throughput);
- ``open``: requests are due at a fixed rate whatever the server does, and each latency is
  measured from the request's *intended* send time, so a stall delays every request queued
  behind it and shows up in the tail (no coordinated omission).

CONFIG (JSON)::

    {"port": 8000, "path": "/work",
     "users": {"mode": "fixed" | "unique", "prefix": "hot-1-", "count": 64},
     "phases": [{"name": "c1", "kind": "closed", "conns": 1, "requests": 2000,
                 "duration": 5.0},
                {"name": "open", "kind": "open", "conns": 32, "rate": 800, "duration": 3.0}]}

``fixed`` users cycle through ``count`` users (request i goes to user i % count); ``unique``
gives every request a user never seen before (the cold path). Every request carries the user
as an HS256 bearer token and, for the floor, in ``x-bench-user``; with ``"keyed": true`` also
an ``Idempotency-Key`` of its own (a client that keys every call).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
import uuid
from collections import Counter
from typing import Any

from .common import make_token

_HARD_TIMEOUT = 60.0


def _request(path: str, user: str, key: str | None = None) -> bytes:
    keyed = f"idempotency-key: {key}\r\n" if key is not None else ""
    return (
        f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {make_token(user)}\r\n"
        f"x-bench-user: {user}\r\n{keyed}\r\n"
    ).encode("latin-1")


_RUN = uuid.uuid4().hex[:12]  # keys never repeat across phases, rounds or runs


class Requests:
    """Request bytes by index: prepared ahead where the count is known, built lazily past it."""

    def __init__(self, path: str, users: dict[str, Any], phase: str, prepare: int) -> None:
        self.path = path
        self.mode = users["mode"]
        self.prefix = f"{users['prefix']}{phase}-" if self.mode == "unique" else users["prefix"]
        count = int(users.get("count", 1))
        self.keyed = f"{_RUN}-{phase}-" if users.get("keyed") else None
        if self.keyed is not None:  # a key of its own for every request: built as sent
            self.users = [f"{self.prefix}{i}" for i in range(count)]
            self.heads = [_request(path, u).removesuffix(b"\r\n") for u in self.users]
            self.fixed: list[bytes] = []
            self.ready: list[bytes] = []
        elif self.mode == "fixed":
            self.fixed = [_request(path, f"{self.prefix}{i}") for i in range(count)]
            self.ready = []
        else:
            self.fixed = []
            self.ready = [_request(path, f"{self.prefix}{i}") for i in range(prepare)]

    def get(self, i: int) -> bytes:
        if self.keyed is not None:
            return (
                self.heads[i % len(self.heads)]
                + f"idempotency-key: {self.keyed}{i}\r\n\r\n".encode()
            )
        if self.fixed:
            return self.fixed[i % len(self.fixed)]
        if i < len(self.ready):
            return self.ready[i]
        return _request(self.path, f"{self.prefix}{i}")


class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None

    async def request(self, data: bytes) -> int:
        """Send one request and read its whole answer; returns the status (0: I/O error)."""
        try:
            if self.writer is None:
                await self.connect()
            assert self.reader is not None
            assert self.writer is not None
            self.writer.write(data)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            chunked = close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            if chunked:
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await self.reader.readexactly(size + 2)
                    if size == 0:
                        break
            elif length:
                await self.reader.readexactly(length)
            if close:
                await self.close()
            return status
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            await self.close()
            return 0


async def closed_phase(
    port: int, reqs: Requests, conns: int, duration: float, limit: int | None
) -> dict[str, Any]:
    conn_list = [Conn(port) for _ in range(conns)]
    for c in conn_list:
        await c.connect()
    lat: list[float] = []
    statuses: Counter[int] = Counter()
    counter = 0
    start = time.perf_counter()
    deadline = start + duration

    async def worker(c: Conn) -> None:
        nonlocal counter
        while time.perf_counter() < deadline and (limit is None or counter < limit):
            i = counter
            counter += 1
            data = reqs.get(i)
            t0 = time.perf_counter()
            status = await c.request(data)
            lat.append(time.perf_counter() - t0)
            statuses[status] += 1

    await asyncio.gather(*(worker(c) for c in conn_list))
    elapsed = time.perf_counter() - start
    for c in conn_list:
        await c.close()
    return {
        "kind": "closed",
        "conns": conns,
        "count": len(lat),
        "elapsed_s": elapsed,
        "rps": len(lat) / elapsed if elapsed else 0.0,
        "lat_us": [round(x * 1e6, 1) for x in lat],
        "status": {str(k): v for k, v in statuses.items()},
    }


async def open_phase(
    port: int, reqs: Requests, conns: int, rate: float, duration: float
) -> dict[str, Any]:
    n = max(1, int(rate * duration))
    conn_list = [Conn(port) for _ in range(conns)]
    for c in conn_list:
        await c.connect()
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    lat: list[float | None] = [None] * n
    statuses: Counter[int] = Counter()
    start = time.perf_counter() + 0.01

    lag: list[float] = []  # how late the dispatcher itself was: the generator's own health

    async def dispatcher() -> None:
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag.append(time.perf_counter() - due)
            queue.put_nowait((i, due))
        for _ in conn_list:
            queue.put_nowait(None)

    async def worker(c: Conn) -> None:
        while (item := await queue.get()) is not None:
            i, due = item
            status = await c.request(reqs.get(i))
            lat[i] = time.perf_counter() - due
            statuses[status] += 1

    tasks = [asyncio.ensure_future(dispatcher())]
    tasks += [asyncio.ensure_future(worker(c)) for c in conn_list]
    _, pending = await asyncio.wait(tasks, timeout=duration + _HARD_TIMEOUT)
    stop = time.perf_counter()
    for t in pending:
        t.cancel()
    missing = 0
    for i, value in enumerate(lat):
        if value is None:  # never answered: it counts at its age when we gave up
            lat[i] = stop - (start + i / rate)
            missing += 1
    if missing:
        statuses[0] += missing
    for c in conn_list:
        await c.close()
    elapsed = stop - start
    return {
        "kind": "open",
        "conns": conns,
        "rate": rate,
        "count": n,
        "dispatch_lag_p99_us": round(sorted(lag)[int(0.99 * (len(lag) - 1))] * 1e6, 1)
        if lag
        else None,
        "elapsed_s": elapsed,
        "rps": n / elapsed if elapsed else 0.0,
        "lat_us": [round(float(x or 0.0) * 1e6, 1) for x in lat],
        "status": {str(k): v for k, v in statuses.items()},
    }


async def run(config: dict[str, Any]) -> dict[str, Any]:
    port = int(config["port"])
    path = config.get("path", "/work")
    out: dict[str, Any] = {"phases": {}}
    for phase in config["phases"]:
        name = phase["name"]
        if phase["kind"] == "open":
            prepare = int(phase["rate"] * phase["duration"]) + 1
        else:
            prepare = int(phase.get("requests") or 0)
        reqs = Requests(path, config["users"], name, prepare)
        if phase["kind"] == "open":
            result = await open_phase(
                port, reqs, int(phase["conns"]), float(phase["rate"]), float(phase["duration"])
            )
        else:
            result = await closed_phase(
                port, reqs, int(phase["conns"]), float(phase["duration"]), phase.get("requests")
            )
        if not phase.get("keep_latencies", True):
            result["lat_us"] = []
        out["phases"][name] = result
    return out


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        config = json.load(f)
    result = asyncio.run(run(config))
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
