"""Reading admin requests: query parameters, JSON bodies, amounts and idempotency keys.

Every helper raises :class:`Problem`, which the app turns into ``application/problem+json``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from ..money import check_key
from ..problems import ProblemResponse

_BASE = "urn:credit-middleware:problem:"
_MAX_BODY = 16 * 1024
_KEY_PREFIX = "admin:"


class Problem(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail

    def response(self) -> ProblemResponse:
        body = {
            "type": _BASE + self.reason,
            "title": self.reason.replace("-", " ").capitalize(),
            "status": self.status,
            "detail": self.detail,
        }
        return ProblemResponse(body, status_code=self.status, headers={"Cache-Control": "no-store"})


def invalid(detail: str) -> Problem:
    return Problem(400, "invalid-request", detail)


def time_param(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(f"{name} must be an ISO 8601 date or time") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def int_param(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # ASCII digits only (``str.isdigit`` takes "²"), and never more than ``hi`` has
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(hi)) or not lo <= int(raw) <= hi:
        raise invalid(f"{name} must be a whole number between {lo} and {hi}")
    return int(raw)


async def _read(request: Request) -> bytes:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_BODY:
            raise Problem(413, "payload-too-large", f"the body is larger than {_MAX_BODY} bytes")
    return raw


async def form_body(request: Request) -> dict[str, str]:
    """An HTML form post (``application/x-www-form-urlencoded``); the last value of a name."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise Problem(415, "unsupported-media-type", "send the form url-encoded")
    raw = await _read(request)
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise invalid("the form is not valid url-encoded UTF-8") from None
    return dict(pairs)


async def json_body(request: Request) -> dict[str, Any]:
    if "json" not in request.headers.get("content-type", ""):
        raise Problem(415, "unsupported-media-type", "send the body as application/json")
    raw = await _read(request)
    try:
        # Floats become Decimal only so they can be refused below with a clear message.
        data = json.loads(raw or b"{}", parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise invalid("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise invalid("the body must be a JSON object")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def amount_field(data: dict[str, Any]) -> str:
    value = data.get("amount")
    if not isinstance(value, str):
        raise invalid('amount must be a decimal string of credits, e.g. "2.5" (not a number)')
    return value


def idempotency_key(request: Request, data: dict[str, Any]) -> str:
    header, field = request.headers.get("idempotency-key"), data.get("idempotency_key")
    if header is not None and field is not None and header != field:
        raise invalid("the Idempotency-Key header and the idempotency_key field differ")
    key = header if header is not None else field
    if key is None:
        raise Problem(428, "idempotency-key-required", "writes need an Idempotency-Key")
    if not isinstance(key, str):
        raise invalid("the idempotency key must be a string")
    try:  # admin keys live in their own namespace, apart from request ids and "trial"
        return check_key(_KEY_PREFIX + check_key(key))
    except ValueError as exc:
        raise invalid(str(exc)) from None


def text_field(data: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 500:
        raise invalid(f"{name} must be a non-empty string of at most 500 characters")
    return value
