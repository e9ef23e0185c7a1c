"""What images and audio cost: images per image by model, size, quality and count; audio by the
length of the file actually sent.

Images are priced by LiteLLM's own image price calculator, the deployment's configured prices
first (``output_cost_per_image``, ``input_cost_per_pixel`` in ``model_info`` or
``litellm_params``), then LiteLLM's price table by ``quality/size/model``. A request that names
no quality is held at its most expensive one. Where neither has a price (LiteLLM 1.108's table
has no ``openai/dall-e-3``), there is no price: the call is refused, never billed zero.

Audio is measured from the uploaded file: ``soundfile`` (what LiteLLM itself uses to bill a
transcription) when installed, else the WAV header, else the file's size at the lowest bitrate
its format is encoded at (an upper bound on its length), capped by ``max_audio_seconds``.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .pricing import Pricer, usd

__all__ = ["IMAGE_SIZES", "audio_seconds", "image_price", "speech_seconds"]

_QUALITIES = ("low", "medium", "high", "standard", "hd", None)
#: The sizes a request that names none (or ``auto``) may come back at: held at the dearest.
IMAGE_SIZES = ("1024x1024", "1024x1536", "1536x1024", "1024x1792", "1792x1024", "512x512")
_DEFAULT_SIZE = "1024-x-1024"  # what OpenAI generates when the request names no size

#: The lowest bitrate (bits per second) each compressed format is commonly encoded at: a file's
#: size at that rate bounds its length from above.
_FLOOR_BPS = {
    "mp3": 8_000,
    "mpga": 8_000,
    "mpeg": 8_000,
    "m4a": 16_000,
    "mp4": 16_000,
    "aac": 16_000,
    "ogg": 6_000,
    "oga": 6_000,
    "opus": 6_000,
    "webm": 6_000,
    "flac": 100_000,
    "wav": 64_000,
}
_UNKNOWN_FLOOR_BPS = 6_000
#: Speech is slower than 5 characters a second only when padded with pauses: a TTS output's
#: length is bounded by its input at that rate.
_CHARS_PER_SECOND = 5


def _size(value: Any) -> str:
    if isinstance(value, str):
        w, sep, h = value.replace("-x-", "x").partition("x")
        if sep and w.isdigit() and h.isdigit() and 0 < int(w) * int(h) <= 10**8:
            return f"{int(w)}-x-{int(h)}"
    return _DEFAULT_SIZE


def _provider(model: str, pricing: Mapping[str, Any]) -> str | None:
    given = pricing.get("custom_llm_provider")
    if isinstance(given, str) and given:
        return given
    return model.split("/", 1)[0] if "/" in model else None


def image_price(
    pricer: Pricer,
    model: str,
    pricing: Mapping[str, Any],
    *,
    size: Any,
    quality: Any,
    n: int,
) -> Decimal | None:
    """LiteLLM's price of ``n`` images of this size and quality (the most expensive quality
    when none is named), the deployment's own prices first; None when nobody prices them."""
    try:
        from litellm.cost_calculator import default_image_cost_calculator
    except ImportError:  # pragma: no cover - an older LiteLLM
        return None
    info = {k: v for k, v in pricing.items() if k != "custom_llm_provider"}
    qualities = (quality,) if isinstance(quality, str) and quality else _QUALITIES
    best: Decimal | None = None
    for q in qualities:
        try:
            cost = usd(
                default_image_cost_calculator(
                    model=model,
                    custom_llm_provider=_provider(model, pricing),
                    quality=q,
                    n=n,
                    size=_size(size),
                    model_info=info or None,  # type: ignore[arg-type]
                )
            )
        except Exception:  # noqa: S112 - no price at this quality: try the next
            continue
        if best is None or cost > best:
            best = cost
    return best


def _read(file: Any) -> tuple[bytes, str]:
    """The bytes and the name of an uploaded file (bytes, a file object or a tuple)."""
    name = ""
    if isinstance(file, tuple) and len(file) >= 2:
        name, file = str(file[0] or ""), file[1]
    if isinstance(file, (bytes, bytearray, memoryview)):
        return bytes(file), name
    read = getattr(file, "read", None)
    if callable(read):
        name = name or str(getattr(file, "name", "") or "")
        tell, seek = getattr(file, "tell", None), getattr(file, "seek", None)
        where = tell() if callable(tell) else None
        if callable(seek):
            seek(0)
        data = read()
        if callable(seek) and where is not None:
            seek(where)
        return (bytes(data) if isinstance(data, (bytes, bytearray)) else b""), name
    return b"", name


def _soundfile_seconds(data: bytes) -> float | None:
    try:
        import soundfile  # type: ignore[import-untyped]
    except (ImportError, OSError):
        return None
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception:
        return None
    seconds = float(info.duration)
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _wav_seconds(data: bytes) -> float | None:
    """Length of a RIFF/WAVE file from its header: data size over byte rate."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, byte_rate, size = 12, 0, None
    while pos + 8 <= len(data):
        chunk, length = data[pos : pos + 4], int(struct.unpack("<I", data[pos + 4 : pos + 8])[0])
        if chunk == b"fmt " and length >= 16 and pos + 20 <= len(data):
            byte_rate = int(struct.unpack("<I", data[pos + 16 : pos + 20])[0])
        elif chunk == b"data":
            size = min(length, len(data) - pos - 8)
            break
        pos += 8 + length + (length & 1)
    if not byte_rate or size is None:
        return None
    return size / byte_rate


def audio_seconds(file: Any, *, cap: int) -> tuple[float, str]:
    """How long the uploaded audio lasts (seconds) and how that was found: ``measured`` from
    the file, ``bound`` from its size at its format's lowest bitrate (at most ``cap``), or
    ``assumed`` (``cap``) when there is no file to look at."""
    data, name = _read(file)
    if not data:
        return float(cap), "assumed"
    seconds = _soundfile_seconds(data) or _wav_seconds(data)
    if seconds is not None:
        return seconds, "measured"
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    floor = _FLOOR_BPS.get(ext, _UNKNOWN_FLOOR_BPS)
    return min(len(data) * 8 / floor, float(cap)), "bound"


def speech_seconds(text: str, *, cap: int) -> float:
    """An upper bound on the length of speech generated from ``text`` (at most ``cap``)."""
    return float(min(math.ceil(len(text) / _CHARS_PER_SECOND) + 1, cap))
