"""Small things the LiteLLM tests share: fresh callback lists per test, and audio to send."""

from __future__ import annotations

import io
import wave

import pytest


def isolate_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    """LiteLLM keeps registered callbacks in module lists: give each test fresh ones."""
    import litellm

    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    for name in (
        "callbacks",
        "success_callback",
        "failure_callback",
        "_async_success_callback",
        "_async_failure_callback",
    ):
        monkeypatch.setattr(litellm, name, [])


def wav(seconds: float, rate: int = 16000) -> bytes:
    """A silent mono 16-bit WAV file ``seconds`` long."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(rate * seconds))
    return buf.getvalue()
