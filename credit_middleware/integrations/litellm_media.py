"""The old import path of :mod:`credit_middleware.integrations.litellm.media` (kept for users)."""

from __future__ import annotations

from .litellm.media import (
    IMAGE_SIZES,
    audio_seconds,
    image_price,
    speech_seconds,
)

__all__ = [
    "IMAGE_SIZES",
    "audio_seconds",
    "image_price",
    "speech_seconds",
]
