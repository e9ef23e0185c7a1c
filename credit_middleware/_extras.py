"""Optional dependencies: imported when the feature that needs them is built, with a clear
error naming the extra that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigurationError

__all__ = ["optional"]


def optional(module: str, needs: str, extra: str) -> ModuleType:
    """Import ``module``, or raise :class:`ConfigurationError` saying ``needs`` and which
    ``pip install 'credit-middleware[extra]'`` brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ConfigurationError(f"{needs}: pip install 'credit-middleware[{extra}]'") from None
