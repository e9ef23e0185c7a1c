"""Settings shared by the orchestrator, the servers and the load generator (all via env)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import jwt

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

JWT_SECRET = "credit-bench-secret-not-for-production-0123456789"
JWT_ISSUER = "credit-bench"
JWT_AUDIENCE = "credit-bench-api"

#: A limit no benchmark run reaches: the limiters must do their work but never refuse.
RATE_LIMIT = "1000000/minute"
RATE_LIMIT_PER_MINUTE = 1_000_000
#: Every rate limiter's strategy (the middleware's default; slowapi is given the same).
STRATEGY = "moving-window"
#: The price of one call to the metered endpoint, in credits (1,000 µc).
PRICE = "0.001"
PRICE_MICROS = 1_000

WORK_PATH = "/work"
FREE_PATH = "/free"
HEALTH_PATH = "/health"


@dataclass(frozen=True)
class BenchEnv:
    """What a server process needs to build its app; passed down as ``CREDIT_BENCH_*`` env."""

    variant: str
    database_url: str  # the benchmark's own database (created and dropped by the orchestrator)
    redis_url: str
    prefix: str  # every Redis key of the run starts with it
    sqlite_path: str

    @classmethod
    def from_env(cls) -> BenchEnv:
        return cls(
            variant=os.environ["CREDIT_BENCH_VARIANT"],
            database_url=os.environ["CREDIT_BENCH_RUN_DATABASE_URL"],
            redis_url=os.environ.get("CREDIT_BENCH_REDIS_URL", DEFAULT_REDIS_URL),
            prefix=os.environ["CREDIT_BENCH_PREFIX"],
            sqlite_path=os.environ["CREDIT_BENCH_SQLITE_PATH"],
        )

    def to_env(self) -> dict[str, str]:
        return {
            "CREDIT_BENCH_VARIANT": self.variant,
            "CREDIT_BENCH_RUN_DATABASE_URL": self.database_url,
            "CREDIT_BENCH_REDIS_URL": self.redis_url,
            "CREDIT_BENCH_PREFIX": self.prefix,
            "CREDIT_BENCH_SQLITE_PATH": self.sqlite_path,
        }


def make_token(sub: str) -> str:
    """A valid HS256 bearer token for ``sub`` (what an IdP would have issued)."""
    now = int(time.time())
    claims = {
        "sub": sub,
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "iat": now,
        "exp": now + 24 * 3600,
        "email": f"{sub}@bench.example",
        "email_verified": True,
    }
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")
