"""The clients: bounded concurrent load from many users, with keyed retries.

Each client owns a disjoint set of users and makes one logical call at a time, so a user never
has two calls in flight (the reconciliation can place every ledger entry of a user in time).
A logical call carries one ``Idempotency-Key`` on all its attempts; after a 503 or a 409 it
waits ``Retry-After`` (capped), after a lost connection a moment, and tries again, a bounded
number of times. Only ever to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from . import contract

#: route name -> (method, path template, metered by the example app)
ROUTES: dict[str, tuple[str, str, bool]] = {
    "echo": ("GET", "/v1/echo?msg={n}", True),  # a fixed price per call
    "chat": ("POST", "/v1/chat/completions", True),  # billed by the handler (hold + capture)
    "missing": ("GET", "/v1/missing/{n}", False),  # a 404: must not be billed
}
_KEPT = (contract.REPLAYED, contract.CHARGE_ID, contract.COST, contract.RETRY_AFTER)


@dataclass
class LoadConfig:
    base_url: str
    jwt_secret: str
    users: int = 160
    concurrency: int = 24
    duration: float = 70.0
    max_calls: int = 40_000
    mix: tuple[tuple[str, float], ...] = (("echo", 0.85), ("chat", 0.10), ("missing", 0.05))
    max_attempts: int = 8
    max_wait: float = 5.0
    call_deadline: float = 45.0
    seed: int = 10


@dataclass
class Attempt:
    """One HTTP exchange. ``status`` None: no answer; ``sent`` says whether the request may
    have reached the app (a refused connection did not; a reset or timeout after it did)."""

    t_send: float
    t_end: float = 0.0
    status: int | None = None
    error: str | None = None
    sent: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    problem: str | None = None

    @property
    def lost_in_flight(self) -> bool:
        return self.status is None and self.sent

    @property
    def replayed(self) -> bool:
        return contract.is_replay(self.headers)

    @property
    def charge_id(self) -> str | None:
        return self.headers.get(contract.CHARGE_ID.lower())


@dataclass
class Call:
    """One logical call: what the user asked for once, with every attempt it took."""

    user: str
    route: str
    key: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def metered(self) -> bool:
        return ROUTES[self.route][2]

    @property
    def final(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


def token(secret: str, user: str) -> str:
    claims = {"sub": user, "email": f"{user}@chaos.test", "email_verified": True}
    claims["exp"] = int(time.time()) + 3600
    return jwt.encode(claims, secret, algorithm="HS256")


def user_names(run_id: str, count: int) -> list[str]:
    return [f"chaos-{run_id}-{i}" for i in range(count)]


class Load:
    """Run the clients until ``duration`` or ``max_calls``; ``calls`` holds everything seen."""

    def __init__(self, cfg: LoadConfig, users: list[str]) -> None:
        self.cfg = cfg
        self.users = users
        self.tokens = {u: token(cfg.jwt_secret, u) for u in users}
        self.calls: list[Call] = []
        self._n = 0

    async def run(self) -> list[Call]:
        cfg = self.cfg
        limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=None)
        timeout = httpx.Timeout(30.0, connect=5.0)
        async with httpx.AsyncClient(
            base_url=cfg.base_url, limits=limits, timeout=timeout, trust_env=False
        ) as http:
            stop_at = time.monotonic() + cfg.duration
            await asyncio.gather(*(self._client(http, i, stop_at) for i in range(cfg.concurrency)))
        return self.calls

    async def _client(self, http: httpx.AsyncClient, idx: int, stop_at: float) -> None:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 1000 + idx)
        mine = self.users[idx :: cfg.concurrency]
        # a few hot users per client run into their rate limit and out of credits
        weights = [6.0 if i % 8 == 0 else 1.0 for i in range(len(mine))]
        names = [name for name, _ in cfg.mix]
        shares = [share for _, share in cfg.mix]
        while time.monotonic() < stop_at and len(self.calls) < cfg.max_calls:
            user = rng.choices(mine, weights)[0]
            call = Call(user, rng.choices(names, shares)[0], uuid.uuid4().hex)
            self.calls.append(call)
            await self._call(http, call, rng)

    async def _call(self, http: httpx.AsyncClient, call: Call, rng: random.Random) -> None:
        cfg = self.cfg
        method, template, _ = ROUTES[call.route]
        self._n += 1
        path = template.format(n=self._n)
        body = None
        if call.route == "chat":
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"say hi #{self._n}"}],
                "max_tokens": 16,
            }
        headers = {
            "authorization": f"Bearer {self.tokens[call.user]}",
            contract.IDEMPOTENCY_KEY: call.key,
        }
        deadline = time.monotonic() + cfg.call_deadline
        for _ in range(cfg.max_attempts):
            attempt = await self._attempt(http, method, path, headers, body)
            call.attempts.append(attempt)
            wait = self._retry_wait(attempt, rng)
            if wait is None or time.monotonic() + wait > deadline:
                return
            await asyncio.sleep(wait)

    async def _attempt(
        self,
        http: httpx.AsyncClient,
        method: str,
        path: str,
        headers: dict[str, str],
        body: dict[str, Any] | None,
    ) -> Attempt:
        attempt = Attempt(t_send=time.time())
        try:
            answer = await http.request(method, path, headers=headers, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            attempt.error, attempt.sent = type(exc).__name__, False
        except httpx.TransportError as exc:  # reset, closed or timed out after sending
            attempt.error = type(exc).__name__
        else:
            attempt.status = answer.status_code
            attempt.headers = {
                k.lower(): answer.headers[k] for k in _KEPT if k.lower() in answer.headers
            }
            if answer.status_code >= 400:
                attempt.problem = _problem_type(answer.content)
        attempt.t_end = time.time()
        return attempt

    def _retry_wait(self, attempt: Attempt, rng: random.Random) -> float | None:
        """Seconds to wait before the next attempt, or None when the answer is final."""
        if attempt.status is None:
            return 0.3 + rng.random() * 0.4
        if attempt.status not in contract.RETRY_STATUSES:
            return None
        try:
            after = float(attempt.headers.get(contract.RETRY_AFTER.lower(), "0.5"))
        except ValueError:
            after = 0.5
        return min(max(after, 0.1), self.cfg.max_wait) * (0.8 + rng.random() * 0.4)


def _problem_type(content: bytes) -> str | None:
    try:
        body = json.loads(content)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return None
    kind = body["type"].rsplit(":", 1)[-1]
    detail = body.get("detail")
    return f"{kind}: {str(detail)[:80]}" if detail else kind
