"""Before a proxied call: is its call type billed here, and what is the most it can cost?

Deny by default: a call type is metered (a kind of :mod:`.litellm_calls`), listed free by the
operator, or refused, naming the route it came in on (LiteLLM's own call type names can mislead:
``GET /v1/files`` reaches the hook as ``alist_fine_tuning_jobs``). A metered call's worst case is
the dearest over every deployment it may be answered by (:func:`.litellm_routes.reachable`);
one that nothing prices refuses the call, since it could be the one that answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from litellm.types.utils import CallTypes

from .calls import Kind, Worst, kind_of, worst_case
from .pricing import Pricer, UnknownModelPrice
from .refusals import CreditRefusal
from .routes import Deployment, reachable

__all__ = ["dearest", "gate", "twins"]

_KNOWN_CALL_TYPES = frozenset(c.value for c in CallTypes)


def twins(names: Iterable[str]) -> frozenset[str]:
    """Each call type with its sync/async twin (``image_generation``/``aimage_generation``):
    the proxy names some calls one way before the call and the other way after it."""
    out: set[str] = set()
    for name in names:
        out |= {name, "a" + name}
        if name.startswith("a"):
            out.add(name[1:])
    return frozenset(out)


def route(data: Mapping[str, Any]) -> str:
    """``POST /v1/batches``: the route a request came in on, as the proxy recorded it."""
    request = data.get("proxy_server_request")
    if isinstance(request, Mapping):
        url, method = request.get("url"), request.get("method")
        if isinstance(url, str) and url:
            path = url.split("://", 1)[-1]
            path = "/" + path.split("/", 1)[1] if "/" in path else "/"
            return f"{method or 'POST'} {path.split('?', 1)[0]}"
    return "this call"


def gate(
    call_type: str,
    data: Mapping[str, Any],
    *,
    free: frozenset[str],
    unknown: Literal["refuse", "free"],
) -> Kind | None:
    """The kind to meter, None to serve free; raises for a call type nobody allowed."""
    if call_type in free:
        return None
    kind = kind_of(call_type)
    if kind is not None:
        return kind
    if call_type not in _KNOWN_CALL_TYPES and unknown == "free":
        return None
    raise CreditRefusal(
        400,
        "call_type_not_billable",
        f"{route(data)} is not billed by this proxy's credit hook, so it is refused"
        f" (LiteLLM calls it {call_type!r}: the operator can list that in free_call_types"
        " to serve it free)",
        call_type=call_type,
    )


def dearest(
    pricer: Pricer,
    router: Any,
    kind: Kind,
    model: str,
    data: Mapping[str, Any],
    *,
    max_audio_seconds: int,
) -> tuple[Worst, Deployment]:
    """The worst case over every deployment the call may be answered by: the group's, and
    its fallbacks'. One that nothing prices refuses the call (it could answer it)."""
    worst: tuple[Worst, Deployment] | None = None
    for d in reachable(router, model, data):
        body = {**data, **d.overrides} if d.overrides else data
        try:
            w = worst_case(
                pricer, kind, d.model, body, d.pricing, max_audio_seconds=max_audio_seconds
            )
        except UnknownModelPrice as exc:
            via = "" if d.group == model else f", a fallback of {model!r}"
            raise CreditRefusal(
                400,
                "unknown_model_price",
                f"{exc} (deployment {d.model!r} of {d.group!r}{via})",
                model=d.model,
            ) from None
        if worst is None or w.usd > worst[0].usd:
            worst = (w, d)
    assert worst is not None
    return worst
