"""Who pays for a proxied call, and how a refusal reaches the client.

A refusal is raised as LiteLLM's own ``ProxyException`` (the proxy answers it as OpenAI's error
body, so the openai SDK shows its message, type and code, and the proxy passes its headers,
``Retry-After`` included); a plain ``HTTPException`` would reach the SDK as a generic error with
our fields nested deep. ``/v1/messages`` answers Anthropic's error envelope instead, built from
the exception's message unless that message already is such an envelope (as JSON): so a
refusal there carries its envelope, with our type, code and figures, in its message.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from litellm.proxy._types import ProxyException

from ...identity.resolvers import Identity

__all__ = ["CreditRefusal", "Identify", "end_user", "in_proxy", "key_owner"]

#: Who pays for a proxied call: an identity (or account id), or None when nobody can be named.
Identify = Callable[[Any, Mapping[str, Any]], "Identity | str | None"]

#: The user id LiteLLM puts on master-key traffic (``LITELLM_PROXY_ADMIN_NAME``): never a payer.
_PROXY_ADMIN = "default_user_id"


class CreditRefusal(ProxyException):
    """A call refused by the credit hook: answered by the proxy as OpenAI's error body, with
    ``type`` and ``code`` both our stable kind and our fields (``required``, ...) beside them."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **fields: object,
    ) -> None:
        super().__init__(message=message, type=kind, param=None, code=status, headers=headers)
        self.status_code = status
        self.kind = kind
        self.fields = {k: str(v) for k, v in fields.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = super().to_dict()
        body["code"] = self.kind
        body.update(self.fields)
        return body

    def for_route(self, call_type: str) -> CreditRefusal:
        """This refusal as the route answers it: Anthropic's envelope on ``/v1/messages``."""
        if call_type not in ("anthropic_messages", "aanthropic_messages"):
            return self
        error = {"type": self.kind, "code": self.kind, "message": self.message, **self.fields}
        envelope = json.dumps({"type": "error", "error": error})
        refusal = CreditRefusal(self.status_code, self.kind, envelope, headers=dict(self.headers))
        refusal.fields = dict(self.fields)
        return refusal


def _user(user_api_key_dict: Any) -> str | None:
    user_id = getattr(user_api_key_dict, "user_id", None)
    if not isinstance(user_id, str) or not user_id or user_id == _PROXY_ADMIN:
        return None
    return user_id


def key_owner(user_api_key_dict: Any, data: Mapping[str, Any]) -> Identity | None:
    """The default payer: the user who owns the proxy key. The request's ``user`` field is
    chosen by the caller, so it never decides who pays unless you pass :func:`end_user`.
    Master-key traffic (LiteLLM's ``default_user_id``) and keys with no user name nobody."""
    user_id = _user(user_api_key_dict)
    if user_id is None:
        return None
    email = getattr(user_api_key_dict, "user_email", None)
    return Identity(user_id, email=email if isinstance(email, str) else None, source="litellm")


def end_user(user_api_key_dict: Any, data: Mapping[str, Any]) -> Identity | None:
    """Bill the request's end user (``user`` in the body), then the key's owner: for platforms
    whose keys are their own backends, passing their users' ids."""
    who = data.get("user") or getattr(user_api_key_dict, "end_user_id", None)
    if isinstance(who, str) and who:
        return Identity(who, source="litellm")
    return key_owner(user_api_key_dict, data)


def in_proxy() -> bool:
    """True inside a LiteLLM proxy process (its server module is loaded)."""
    return "litellm.proxy.proxy_server" in sys.modules
