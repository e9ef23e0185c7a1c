"""The old import path of :mod:`credit_middleware.trials.provisioning` (kept for users)."""

from __future__ import annotations

from .trials.provisioning import (
    Layer,
    Provisioner,
    ProvisionResult,
)

__all__ = [
    "Layer",
    "ProvisionResult",
    "Provisioner",
]
