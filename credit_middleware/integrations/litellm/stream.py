"""A streamed LLM call, passed through chunk by chunk and billed for what it produced.

The stream settles exactly once, whichever way it ends: exhausted (usage from the final chunk,
or counted from the chunks), closed early by the client (``aclose``, ``async with``, or dropped
after a ``break``), or broken by a provider error. What was generated is charged; a stream that
produced nothing is released. A stream that produced tokens is never billed zero.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

from ...ledger import Receipt
from .meter import Meter, MeteredCall

__all__ = ["CreditedStream"]

log = logging.getLogger("credit_middleware.litellm")


def _text_of(chunks: list[Any]) -> str:
    """Everything the model generated in these chunks: content, reasoning, tool calls."""
    parts: list[str] = []
    for chunk in chunks:
        for choice in getattr(chunk, "choices", None) or ():
            delta = getattr(choice, "delta", None)
            if delta is None:
                continue
            for name in ("content", "reasoning_content"):
                value = getattr(delta, name, None)
                if isinstance(value, str):
                    parts.append(value)
            for call in getattr(delta, "tool_calls", None) or ():
                fn = getattr(call, "function", None)
                for name in ("name", "arguments"):
                    value = getattr(fn, name, None)
                    if isinstance(value, str):
                        parts.append(value)
    return "".join(parts)


class _Tally:
    """The chunks seen so far and the one settlement of the call's hold."""

    def __init__(self, meter: Meter, call: MeteredCall, served: Any = None) -> None:
        self.meter = meter
        self.call = call
        #: the deployment that answered (a ``Deployment``: ``model``, ``pricing``), if known
        self.model: str = getattr(served, "model", None) or call.model
        self.pricing: Any = getattr(served, "pricing", None) or call.pricing
        self.chunks: list[Any] = []
        self.settled = False
        self.receipt: Receipt | None = None

    async def settle(self, outcome: str) -> None:
        """Settle once; never raises for the ledger (a stream must end cleanly for its
        reader): a settlement the ledger cannot take now is kept and lands later."""
        if self.settled:
            return
        self.settled = True
        try:
            self.receipt = await self.meter.shielded(self._settle(outcome))
        except Exception:
            log.exception("settling LLM stream %s failed", self.call.request_id)

    def settle_later(self, outcome: str) -> None:
        if not self.settled:
            self.settled = True
            self.meter.spawn(self._settle(outcome))

    def usage(self) -> tuple[int, int, Any]:
        """(prompt tokens, completion tokens, LiteLLM usage or None) for what was generated."""
        for chunk in reversed(self.chunks):
            u = getattr(chunk, "usage", None)
            if u is not None and (getattr(u, "completion_tokens", 0) or 0) > 0:
                prompt = int(getattr(u, "prompt_tokens", 0) or 0) or self.call.prompt_tokens
                return prompt, int(u.completion_tokens), u
        text = _text_of(self.chunks)
        completion = 0
        if text:
            lm = self.meter.litellm
            try:
                completion = int(
                    lm.token_counter(model=self.model, text=text, count_response_tokens=True)
                )
            except Exception:
                completion = 0
            completion = max(completion, 1)  # text came out: never zero tokens
        return self.call.prompt_tokens, completion, None

    async def _settle(self, outcome: str) -> Receipt | None:
        meter, call = self.meter, self.call
        if not self.chunks:
            await meter.release(call, outcome)
            return None
        prompt, completion, usage = self.usage()
        cost: Decimal
        try:
            cost, source = meter.price(self.model, prompt, completion, self.pricing, usage)
        except Exception:
            log.warning("no price for stream %s: charging its estimate", call.request_id)
            cost, source = call.estimate_usd, "estimate"
        return await meter.charge(
            call,
            cost,
            prompt_tokens=prompt,
            completion_tokens=completion,
            source=source,
            outcome=outcome,
            served=self.model if self.model != call.model else None,
        )


class CreditedStream:
    """Async iterator over a LiteLLM stream's chunks; settles its credit hold when it ends.

    Use ``async for chunk in stream``; to stop early, ``await stream.aclose()`` (or use
    ``async with stream``). A stream dropped without closing settles in the background
    (``CreditedLLM.drain()`` waits for it). ``receipt`` is the capture, once settled.
    """

    def __init__(self, meter: Meter, call: MeteredCall, stream: Any) -> None:
        self._inner = stream
        self._iter = stream.__aiter__()
        self._tally = _Tally(meter, call)
        self._loop = asyncio.get_running_loop()
        self.request_id = call.request_id
        meter.open_streams.add(self)  # a weak set: found again at shutdown if never closed

    @property
    def receipt(self) -> Receipt | None:
        return self._tally.receipt

    @property
    def settled(self) -> bool:
        return self._tally.settled

    def __aiter__(self) -> CreditedStream:
        return self

    async def __anext__(self) -> Any:
        if self._tally.settled:
            raise StopAsyncIteration
        try:
            chunk = await self._iter.__anext__()
        except StopAsyncIteration:
            await self._tally.settle("complete")
            raise
        except Exception:
            await self._tally.settle("provider_error")
            raise
        except BaseException:
            await self._tally.settle("cancelled")
            raise
        self._tally.chunks.append(chunk)
        return chunk

    async def aclose(self, *, outcome: str = "client_closed") -> None:
        """Stop reading: close the provider stream and charge what was generated so far."""
        if self._tally.settled:
            return
        try:
            close = getattr(self._inner, "aclose", None)
            if close is not None:
                await close()
        except Exception:
            log.debug("closing the provider stream failed", exc_info=True)
        finally:
            await self._tally.settle(outcome)

    async def __aenter__(self) -> CreditedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        tally: _Tally | None = getattr(self, "_tally", None)
        if tally is None or tally.settled:
            return
        try:
            self._loop.call_soon_threadsafe(tally.settle_later, "abandoned")
        except RuntimeError:  # the loop is closed: nothing can settle it now
            log.warning(
                "LLM stream %s was dropped after its event loop closed, never closed: its hold"
                " is released when it times out, and what it generated is not billed",
                self.request_id,
            )
            return
        log.warning(
            "LLM stream %s was dropped without aclose(): charging what it generated",
            self.request_id,
        )
