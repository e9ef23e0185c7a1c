"""Build one ``redis.asyncio`` client from a URL; its pool is shared by the limiter and lock."""

from __future__ import annotations

from typing import Any

from .errors import ConfigurationError

__all__ = ["redis_from_url"]


def redis_from_url(url: str, *, timeout: float = 0.5, max_connections: int = 100) -> Any:
    """A lazily-connecting ``redis.asyncio.Redis`` with socket timeouts on every call."""
    try:
        import redis.asyncio as redis
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ConfigurationError(
            "Redis needs redis-py: pip install 'credit-middleware[redis]'"
        ) from None
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"unsupported Redis URL scheme {scheme!r}: use redis://host:port/db or rediss://..."
        )
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        max_connections=max_connections,
    )
