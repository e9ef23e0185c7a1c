"""One ``redis.asyncio`` client from a URL, shared by the rate limiter and the provisioning lock.

Schemes:

- ``redis://[[user]:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock``;
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``: the master
  of ``service_name`` as the Sentinels name it, followed across failovers (the credentials are
  the master's; Sentinels without a password);
- ``redis+cluster://[[user]:password@]host:port[,host:port...]`` and ``rediss+cluster://``: a
  Redis Cluster, found from any of the listed nodes.

:func:`limits_storage` gives `limits` a storage on the same client (the same pool for a plain or
Sentinel client, the same per-node pools for a cluster): one set of connections, closed once.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from ._aio import bounded
from ._extras import optional
from .errors import ConfigurationError

__all__ = ["close_redis", "is_cluster", "limits_storage", "redis_from_url"]

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster")


def _redis() -> Any:
    return optional("redis.asyncio", "Redis needs redis-py", "redis")


def redis_from_url(url: str, *, timeout: float = 0.5, max_connections: int = 100) -> Any:
    """A lazily-connecting client with socket timeouts on every call (nothing connects here)."""
    redis = _redis()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise ConfigurationError(
            f"unsupported Redis URL {_safe(url)!r}: use redis://host:port/db, rediss://...,"
            " redis+sentinel://host:26379/service or redis+cluster://host:port,host:port"
        )
    common: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if scheme in ("redis", "rediss", "unix"):
        return redis.Redis.from_url(
            url,
            max_connections=max_connections,
            connection_class=_connection_class(scheme),
            **common,
        )
    user, password, nodes, path = _split(rest, url)
    if scheme == "redis+sentinel":
        from redis.asyncio.sentinel import Sentinel

        parts = [p for p in path.split("/") if p]
        if not 1 <= len(parts) <= 2:
            raise ConfigurationError(
                f"{_safe(url)!r}: a Sentinel URL names its service:"
                " redis+sentinel://host:26379/mymaster[/db]"
            )
        db = _number(parts[1], "database", url) if len(parts) == 2 else 0
        factory: Any = Sentinel  # redis-py leaves its __init__ unannotated
        sentinel = factory(
            nodes,
            sentinel_kwargs=dict(common),
            username=user,
            password=password,
            db=db,
            max_connections=max_connections,
            **common,
        )
        return sentinel.master_for(unquote(parts[0]))
    from redis.asyncio.cluster import ClusterNode

    if path.strip("/"):
        raise ConfigurationError(f"{_safe(url)!r}: a Redis Cluster has no databases to name")
    return _cluster_class()(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        username=user,
        password=password,
        ssl=scheme == "rediss+cluster",
        **common,
    )


_CONNECTIONS: dict[str, Any] = {}


def _connection_class(scheme: str) -> Any:
    """redis-py's connection for ``scheme`` whose writes are bounded in the caller's task.

    With a socket timeout, redis-py 8.1 bounds every write with ``asyncio.wait_for``, which on
    Python 3.11 runs it in a task of its own: a task per command, on every request's rate
    limit. Here, on a connection already made, the same bound is :func:`bounded`
    (``asyncio.timeout``) around the write (reads keep redis-py's own bound, which never needed
    a task); a write that times out disconnects and raises redis-py's ``TimeoutError``, as
    before."""
    cls = _CONNECTIONS.get(scheme)
    if cls is not None:
        return cls
    import asyncio

    from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
    from redis.exceptions import TimeoutError as RedisTimeout

    base: Any = {"rediss": SSLConnection, "unix": UnixDomainSocketConnection}.get(
        scheme, Connection
    )

    class BoundedWrites(base):  # type: ignore[misc]
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            bound: float | None = getattr(self, "socket_timeout", None)
            if not bound or not self.is_connected:
                # connecting (and its handshake's reads) keeps redis-py's own bounds: this one
                # command per connection still writes through its wait_for
                await super().send_packed_command(command, check_health)
                return
            self.socket_timeout = None  # redis-py then writes without its wait_for
            writer = getattr(self, "_writer", None)
            try:
                await bounded(super().send_packed_command(command, check_health), bound)
            except asyncio.TimeoutError:
                if writer is not None:  # drop what is still buffered: the peer is not reading
                    writer.transport.abort()
                await self.disconnect(nowait=True)
                raise RedisTimeout("Timeout writing to socket") from None
            finally:
                self.socket_timeout = bound

    BoundedWrites.__name__ = BoundedWrites.__qualname__ = f"BoundedWrites{base.__name__}"
    _CONNECTIONS[scheme] = BoundedWrites
    return BoundedWrites


_CLUSTER: Any = None


def _cluster_class() -> Any:
    """``RedisCluster`` whose first commands wait for one initialisation. On a fresh client,
    concurrent first commands (a herd of first requests) sometimes failed with
    ``AttributeError: 'NoneType' object has no attribute 'writelines'`` (redis-py 8.1: work
    done before its own lazy initialise raced with it); initialising first never did."""
    global _CLUSTER
    if _CLUSTER is None:
        from redis.asyncio.cluster import RedisCluster

        class InitialisedCluster(RedisCluster):
            async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
                if getattr(self, "_initialize", False):
                    await self.initialize()  # under redis-py's own lock: once
                return await super().execute_command(*args, **kwargs)

        _CLUSTER = InitialisedCluster
    return _CLUSTER


def is_cluster(client: Any) -> bool:
    try:
        from redis.asyncio.cluster import RedisCluster
    except ImportError:  # pragma: no cover - depends on the installed extras
        return False
    return isinstance(client, RedisCluster)


def limits_storage(client: Any, *, key_prefix: str) -> Any:
    """A `limits` async Redis storage that talks to the same Redis as ``client``."""
    from limits.aio import storage as lstorage

    if is_cluster(client):
        return _cluster_storage(client, key_prefix)
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        raise ConfigurationError(
            "expected a redis.asyncio client (Redis, a Sentinel master, or RedisCluster)"
        )
    return lstorage.RedisStorage(
        "async+redis://", implementation="redispy", key_prefix=key_prefix, connection_pool=pool
    )


def _cluster_storage(client: Any, key_prefix: str) -> Any:
    """limits' cluster storage on the app's own ``RedisCluster`` (its per-node pools, closed
    with the client) instead of a second cluster client that nothing would close."""
    from limits.aio.storage import RedisClusterStorage

    class SharedClusterStorage(RedisClusterStorage):
        def configure_bridge(self) -> None:
            bridge: Any = self.bridge
            bridge.storage = client
            bridge.connection_getter = lambda _readonly: client

    nodes = ",".join(
        f"[{n.host}]:{n.port}" if ":" in n.host else f"{n.host}:{n.port}"
        for n in client.nodes_manager.startup_nodes.values()
    )  # parsed by limits, never dialled: the client above does the talking
    return SharedClusterStorage(
        f"async+redis+cluster://{nodes}", implementation="redispy", key_prefix=key_prefix
    )


async def close_redis(client: Any) -> None:
    """Close the client, and for a Sentinel master also its connections to the Sentinels."""
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    await client.aclose()
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()


def _split(rest: str, url: str) -> tuple[str | None, str | None, list[tuple[str, int]], str]:
    """``[[user]:password@]host:port[,host:port...][/path]`` of a multi-host URL."""
    if "?" in rest or "#" in rest:  # dropping them silently would ignore what was asked for
        raise ConfigurationError(
            f"{_safe(url)!r}: Sentinel and Cluster URLs take no ?options; pass a client instead"
        )
    hosts, slash, path = rest.partition("/")
    user = password = None
    if "@" in hosts:
        auth, hosts = hosts.rsplit("@", 1)
        name, colon, secret = auth.partition(":")
        user = unquote(name) or None
        password = unquote(secret) if colon else None
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        if item.startswith("["):  # [IPv6]:port
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.rpartition(":")
        if not host or not port:
            raise ConfigurationError(f"{_safe(url)!r}: every node needs host:port")
        nodes.append((host, _number(port, "port", url, maximum=65535)))
    return user, password, nodes, slash + path


def _number(text: str, what: str, url: str, *, maximum: int = 10_000) -> int:
    if not text.isdigit() or not 0 <= int(text) <= maximum:
        raise ConfigurationError(f"{_safe(url)!r}: {what} {text!r} is not a number")
    return int(text)


def _safe(url: str) -> str:
    """The URL without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
