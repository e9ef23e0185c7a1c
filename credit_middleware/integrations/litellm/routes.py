"""Which deployments a proxied call may reach, and which one answered it.

A call for a model group can be served by any deployment of that group and, when they fail, by
any deployment of the groups its fallbacks name (the router's ``fallbacks``,
``context_window_fallbacks`` and ``content_policy_fallbacks``, the generic ``"*"`` chain, and
fallbacks the request itself lists), transitively. The hold must cover the most expensive of
them; the capture prices the one that answered, found by the model id LiteLLM logs for it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PRICE_KEYS", "Deployment", "deployments", "proxy_router", "reachable", "served_by"]

#: Deployment settings (``litellm_params`` or ``model_info``) that change what a call costs.
PRICE_KEYS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "input_cost_per_second",
    "output_cost_per_second",
    "input_cost_per_character",
    "output_cost_per_character",
    "input_cost_per_image",
    "output_cost_per_image",
    "input_cost_per_pixel",
    "output_cost_per_pixel",
    "output_cost_per_image_token",
    "input_cost_per_audio_token",
    "output_cost_per_audio_token",
    "input_cost_per_query",
    "custom_llm_provider",
)

_FALLBACK_SETTINGS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")
#: How many model groups one call's fallbacks may span before the hook stops following them.
_MAX_GROUPS = 64


@dataclass(frozen=True, slots=True)
class Deployment:
    """One place a call can go: the model LiteLLM prices it as, that deployment's own prices,
    the request fields a client-side fallback replaces, and the group it belongs to."""

    model: str
    pricing: dict[str, Any]
    group: str
    overrides: dict[str, Any] = field(default_factory=dict)


# LiteLLM 1.110 reads a router through ``registry()`` and ``settings()`` and deprecates the
# attributes 1.108 had; both are read here, the newer way first.


def _group_of(router: Any, model: str) -> list[Any]:
    registry = getattr(router, "registry", None)
    if callable(registry):
        return list(registry().deployments(model) or [])
    return list(router.get_model_list(model_name=model) or [])


def _setting(router: Any, name: str) -> Any:
    settings = getattr(router, "settings", None)
    if callable(settings):
        return getattr(settings(), name, None)
    return getattr(router, name, None)


def _by_id(router: Any, model_id: str) -> Any:
    registry = getattr(router, "registry", None)
    if callable(registry):
        return registry().deployment(model_id)
    return router.get_deployment(model_id=model_id)


def proxy_router() -> Any:
    """The proxy's router (``llm_router``), or None outside the proxy or before it started."""
    module = sys.modules.get("litellm.proxy.proxy_server")
    return getattr(module, "llm_router", None) if module is not None else None


def _pricing(params: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: params[k] if params.get(k) is not None else info.get(k)
        for k in PRICE_KEYS
        if params.get(k) is not None or info.get(k) is not None
    }


def _deployment(raw: Any, group: str) -> Deployment | None:
    if not isinstance(raw, Mapping):
        dump = getattr(raw, "model_dump", None)
        raw = dump() if callable(dump) else None
    if not isinstance(raw, Mapping):
        return None
    params = raw.get("litellm_params") or {}
    info = raw.get("model_info") or {}
    name = info.get("base_model") or params.get("model")
    if not isinstance(name, str) or not name:
        return None
    return Deployment(name, _pricing(params, info), group)


def deployments(router: Any, model: str) -> list[Deployment]:
    """The deployments of one model group (often an alias): each priced as its
    ``litellm_params.model`` (or ``model_info.base_model``) with its own prices. Just ``model``
    when the router has no deployment by that name (no router, or a name LiteLLM prices)."""
    found: list[Any] = []
    if router is not None:
        try:
            found = _group_of(router, model)
        except Exception:
            found = []
    out = [d for d in (_deployment(raw, model) for raw in found) if d is not None]
    return out or [Deployment(model, {}, model)]


def _chains(fallbacks: Any, group: str) -> list[Any]:
    """Every chain of ``fallbacks`` (``[{"group": [...]}, {"*": [...]}]``) that may apply to
    ``group``: its own (LiteLLM's matching: exact, provider prefix stripped or added) and the
    generic one. A superset of what the router picks, which is what a hold needs."""
    if not isinstance(fallbacks, list):
        return []
    out: list[Any] = []
    try:
        from litellm.router_utils.fallback_event_handlers import get_fallback_model_group

        chain, _ = get_fallback_model_group(fallbacks=fallbacks, model_group=group)
        if chain:
            out.append(chain)
    except Exception:  # noqa: S110 - an older LiteLLM: the exact names below still count
        pass
    for item in fallbacks:
        if isinstance(item, Mapping):
            for key, chain in item.items():
                if key in (group, "*") or key.split("/")[-1] == group.split("/")[-1]:
                    out.append(chain)
    return out


def _targets(chain: Any, fallback_group: str) -> Iterable[tuple[str, dict[str, Any]]]:
    """(group, request fields it replaces) of each step of a fallback chain."""
    for step in chain if isinstance(chain, list) else [chain]:
        if isinstance(step, str) and step:
            yield step, {}
        elif isinstance(step, Mapping):
            name = step.get("model") or fallback_group
            if isinstance(name, str) and name:
                overrides = {k: v for k, v in step.items() if not k.startswith("_")}
                overrides.pop("model", None)
                yield name, overrides


def reachable(router: Any, model: str, data: Mapping[str, Any]) -> list[Deployment]:
    """Every deployment a call for ``model`` with request ``data`` may be answered by: its
    group's, then every group its fallbacks reach (the router's and the request's own),
    unless the request disables fallbacks."""
    groups: dict[str, dict[str, Any]] = {model: {}}
    todo = [model]
    use_fallbacks = data.get("disable_fallbacks") is not True
    while todo and use_fallbacks and len(groups) < _MAX_GROUPS:
        group = todo.pop()
        for setting in _FALLBACK_SETTINGS:
            for source in (data.get(setting), _setting(router, setting)):
                if group == model and isinstance(source, list) and source and _listed(source):
                    chains: list[Any] = [source]  # the request's own ["gpt-4o", ...]
                else:
                    chains = _chains(source, group)
                for chain in chains:
                    for target, overrides in _targets(chain, group):
                        if target not in groups:
                            groups[target] = overrides
                            todo.append(target)
    out: list[Deployment] = []
    for group, overrides in groups.items():
        for d in deployments(router, group):
            out.append(Deployment(d.model, d.pricing, group, overrides))
    return out


def _listed(source: list[Any]) -> bool:
    """A client-side fallback list (``["gpt-4o", {"model": ...}]``), not a router mapping."""
    return all(
        isinstance(s, str) or (isinstance(s, Mapping) and isinstance(s.get("model"), str))
        for s in source
    )


def served_by(router: Any, kwargs: Mapping[str, Any]) -> Deployment | None:
    """The deployment that answered a call, from the model id LiteLLM logged for it."""
    slo = kwargs.get("standard_logging_object") or {}
    params = kwargs.get("litellm_params") or {}
    info = params.get("model_info") if isinstance(params, Mapping) else None
    model_id = (slo.get("model_id") if isinstance(slo, Mapping) else None) or (
        info.get("id") if isinstance(info, Mapping) else None
    )
    if router is None or not isinstance(model_id, str) or not model_id:
        return None
    try:
        found = _by_id(router, model_id)
    except Exception:
        return None
    if found is None:
        return None
    group = getattr(found, "model_name", None) or ""
    return _deployment(found, str(group))
