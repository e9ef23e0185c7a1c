"""``Idempotency-Key`` on metered requests, as draft-ietf-httpapi-idempotency-key-header and
Stripe do it: a key belongs to one account and one request fingerprint (method, path, query and
a SHA-256 of the body); the first response is kept for exact retries, which get it back without
the handler running again or a new charge.

What is stored, in the ledger's database (``credit_requests``): the key, the fingerprint, the
status, the app's response headers (not the middleware's own) and the body up to
``max_stored_body`` bytes, for ``idempotency_ttl`` (24 h by default).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from starlette.types import Message, Receive, Scope, Send

from ..errors import IdempotencyConflict, IdempotencyInFlight, IdempotencyMismatch
from ..ledger import StoredResponse
from ..problems import Refused, problem, retry_after

__all__ = [
    "REPLAY_HEADER",
    "BufferedRequest",
    "Recorder",
    "client_key",
    "read_request",
    "send_replay",
]

#: Marks a response replayed from the store (Stripe's name for it).
REPLAY_HEADER = "Idempotent-Replayed"
# Not worth keeping: per-connection framing, and what the server adds to every response.
_UNSTORED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"})


def client_key(scope: Scope) -> str | None:
    """The client's ``Idempotency-Key``, or None; a malformed one is a 400."""
    for name, value in scope.get("headers", ()):
        if name == b"idempotency-key":
            try:
                key = str(value.decode("ascii")).strip().strip('"')
            except UnicodeDecodeError:
                key = ""
            if not key or len(key) > 200 or any(not 32 < ord(c) < 127 for c in key):
                body = problem(
                    "invalid-request", "Idempotency-Key must be 1-200 visible ASCII characters"
                )
                raise Refused(body, "bad_idempotency_key")
            return key
    return None


@dataclass(slots=True)
class BufferedRequest:
    """A request body read ahead (to fingerprint it), handed to the app unchanged."""

    fingerprint: str
    messages: list[Message] = field(default_factory=list)

    def receive(self, receive: Receive) -> Receive:
        queued = list(self.messages)

        async def replayed() -> Message:
            if queued:
                return queued.pop(0)
            return await receive()

        return replayed


async def read_request(scope: Scope, receive: Receive, limit: int) -> BufferedRequest:
    """Read the whole body (at most ``limit`` bytes, else 413) and fingerprint the request."""
    digest = hashlib.sha256()
    for part in (scope.get("method", ""), scope.get("path", "")):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\x00")
    digest.update(bytes(scope.get("query_string", b"")) + b"\x00")
    out = BufferedRequest("")
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(problem("invalid-request", "the client went away"), "disconnected")
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            detail = f"a request with an Idempotency-Key may carry at most {limit} bytes"
            raise Refused(problem("request-too-large", detail), "request_too_large")
        digest.update(body)
        out.messages.append(message)
        if not message.get("more_body", False):
            break
    out.fingerprint = digest.hexdigest()
    return out


class Recorder:
    """Keeps what the app sent (its own headers, the body up to ``limit`` bytes)."""

    __slots__ = ("body", "headers", "limit", "size", "status")

    def __init__(self, limit: int) -> None:
        self.status = 0
        self.headers: tuple[tuple[str, str], ...] = ()
        self.body: bytearray | None = bytearray()
        self.size = 0
        self.limit = limit

    def start(self, message: Message) -> None:
        self.status = int(message["status"])
        self.headers = tuple(
            (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
            for k, v in message.get("headers", ())
            if bytes(k).lower() not in _UNSTORED
        )

    def chunk(self, message: Message) -> None:
        body = message.get("body", b"")
        self.size += len(body)
        if self.body is not None:
            if self.size > self.limit:
                self.body = None  # too large to keep: the status and headers still are
            else:
                self.body.extend(body)

    def stored(self) -> StoredResponse:
        body = None if self.body is None else bytes(self.body)
        return StoredResponse(self.status, self.headers, body, self.size)


async def send_replay(
    stored: StoredResponse,
    scope: Scope,
    receive: Receive,
    send: Send,
    extra: Iterable[tuple[str, str]],
) -> None:
    """Answer with a stored response, marked as a replay (no ``Credit-Cost``: nothing charged)."""
    if stored.body is None:
        detail = (
            f"this key's request was served (status {stored.status}) and charged once; its"
            f" response ({stored.size} bytes) was too large to keep for replays"
        )
        refusal = problem("idempotency-response-not-stored", detail)
        refusal.headers[REPLAY_HEADER] = "true"
        await refusal(scope, receive, send)
        return
    headers = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in stored.headers
        if k.lower() not in ("content-length", "credit-cost")
    ]
    headers.append((b"content-length", str(len(stored.body)).encode()))
    headers.append((REPLAY_HEADER.lower().encode(), b"true"))
    headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra)
    await send({"type": "http.response.start", "status": stored.status, "headers": headers})
    await send({"type": "http.response.body", "body": stored.body})


def key_refused(exc: IdempotencyConflict) -> Refused:
    """The refusal of a request whose ``Idempotency-Key`` cannot be served now: reused for
    another request (422-style mismatch), still in flight (try again), or in conflict."""
    if isinstance(exc, IdempotencyMismatch):
        return Refused(problem("idempotency-mismatch", str(exc)), "idempotency_mismatch")
    if isinstance(exc, IdempotencyInFlight):
        body = problem("idempotency-in-flight", str(exc), headers=retry_after(1))
        return Refused(body, "idempotency_in_flight")
    return Refused(problem("idempotency-conflict", str(exc)), "idempotency_conflict")
