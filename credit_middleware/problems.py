"""Refusals as RFC 9457 ``application/problem+json`` responses with a stable ``type``.

Clients branch on ``type`` (never on ``title`` or ``detail``, which are for people) and read the
numbers they need (``required``, ``available``, ``tier``, ``retry_after``) from the body.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.responses import Response

from .errors import InsufficientCredits

__all__ = [
    "PROBLEM_TYPES",
    "ProblemResponse",
    "Refused",
    "insufficient",
    "ledger_down",
    "openapi_responses",
    "problem",
    "retry_after",
]

_BASE = "urn:credit-middleware:problem:"

#: reason -> (status, title); the reason is also the last part of the ``type`` URI.
PROBLEM_TYPES: Mapping[str, tuple[int, str]] = {
    "invalid-request": (400, "Malformed request"),
    "unauthenticated": (401, "Authentication required"),
    "invalid-credentials": (401, "Invalid credentials"),
    "insufficient-credits": (402, "Insufficient credits"),
    "trial-denied": (402, "No trial credits for this account"),
    "idempotency-conflict": (409, "Idempotency key reused"),
    "idempotency-in-flight": (409, "A request with this Idempotency-Key is still being served"),
    "idempotency-response-not-stored": (409, "Idempotency key already used"),
    "idempotency-mismatch": (422, "Idempotency-Key reused for a different request"),
    "request-too-large": (413, "Request too large"),
    "rate-limited": (429, "Rate limit exceeded"),
    "ledger-unavailable": (503, "Billing temporarily unavailable"),
    "rate-limiter-unavailable": (503, "Rate limiting temporarily unavailable"),
    "unpriced-route": (500, "This route cannot be priced"),
}


class ProblemResponse(Response):
    media_type = "application/problem+json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def problem(
    reason: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    """A problem response for one of :data:`PROBLEM_TYPES`; ``extra`` members go in the body."""
    status, title = PROBLEM_TYPES[reason]
    body: dict[str, Any] = {"type": _BASE + reason, "title": title, "status": status}
    body["detail"] = detail
    body.update({k: v for k, v in extra.items() if v is not None})
    hdrs = dict(headers or {})
    if status == 401:
        hdrs.setdefault("WWW-Authenticate", "Bearer")
    return ProblemResponse(body, status_code=status, headers=hdrs)


class Refused(Exception):
    """Raised inside the middleware to answer with ``response`` (``reason`` is for metrics)."""

    def __init__(self, response: ProblemResponse, reason: str, *, charged_id: bool = False) -> None:
        self.response = response
        self.reason = reason
        #: the refusal follows a charge attempt: its id goes in the answer (nothing charged)
        self.charged_id = charged_id


def retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


LEDGER_RETRY_AFTER = 5


def ledger_down() -> ProblemResponse:
    return problem(
        "ledger-unavailable",
        "the credit ledger is unavailable; retry later",
        headers=retry_after(LEDGER_RETRY_AFTER),
        retry_after=LEDGER_RETRY_AFTER,
    )


def insufficient(
    exc: InsufficientCredits,
    *,
    tier: str,
    trial_denied: object,
    headers: Iterable[tuple[str, str]] | Mapping[str, str],
    balance_header: str = "Credit-Balance",
) -> ProblemResponse:
    """A 402 with the numbers (and the ``Credit-Balance`` header a served call has);
    ``trial-denied`` (and why) for an account refused a trial."""
    reason = "trial-denied" if trial_denied else "insufficient-credits"
    hdrs = dict(headers)
    hdrs.setdefault(balance_header, str(exc.available))  # what is left, as on a served call
    detail = (
        f"no trial credits: {trial_denied}" if trial_denied else "not enough credits for this call"
    )
    return problem(
        reason,
        detail,
        headers=hdrs,
        required=str(exc.required),
        available=str(exc.available),
        tier=exc.tier or tier,
        trial_denied=str(trial_denied) if trial_denied else None,
    )


_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "required": {"type": "string", "description": "credits this call needs (402)"},
        "available": {"type": "string", "description": "credits available (402)"},
        "tier": {"type": "string"},
        "limit": {"type": "string", "description": "the rate limit exceeded (429)"},
        "retry_after": {"type": "integer", "description": "seconds to wait (429, 503)"},
    },
}

_DOCUMENTED: Mapping[int, str] = {
    401: "No credential, or a forged, expired or malformed one",
    402: "Not enough credits for this call (or no trial for this account)",
    429: "Rate limit of the caller's tier exceeded; see Retry-After and RateLimit",
    503: "Billing temporarily unavailable; retry after Retry-After (nothing was charged)",
}


def openapi_responses() -> dict[int, dict[str, Any]]:
    """The middleware's refusals as OpenAPI ``responses`` (FastAPI's ``responses=`` format),
    each an ``application/problem+json`` body; a fresh dict on every call."""
    return {
        status: {
            "description": text,
            "content": {"application/problem+json": {"schema": dict(_PROBLEM_SCHEMA)}},
        }
        for status, text in _DOCUMENTED.items()
    }
