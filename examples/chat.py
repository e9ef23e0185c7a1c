"""``POST /v1/chat/completions``: an OpenAI-shaped chat endpoint paid by the caller's credits.

Each call is metered through :class:`~credit_middleware.integrations.litellm.CreditedLLM`
(hold the worst case, capture LiteLLM's actual cost), not at the fixed per-call price, so the
middleware must treat this path as billed by the handler (``Route(path, mode="handler")``). It
answers from LiteLLM's ``mock_response`` by default, so it runs without a provider key; pass
``mock_response=None`` to call the real provider. The caller is the identity the middleware
put in ``request.state.credit_identity``; the hold's idempotency key is the request's charge id
(``request.state.credit_charge_id``), so a retried attempt never holds twice.

Importing and initialising LiteLLM takes seconds of CPU (tens of seconds on a busy machine,
after a worker restart): ``await warm_up(app)`` in the app's lifespan starts it at startup, off
the event loop (in a thread), so no request waits behind it; without it the first chat request
starts it, still off the loop. A chat request arriving while it loads waits at most
``ready_timeout`` seconds, then gets 503 with ``Retry-After``: it never hangs.

    routes.append(chat_route(services.provisioner))
    ...
    await warm_up(app)  # in the lifespan
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from credit_middleware import BackendUnavailable, Identity, InsufficientCredits, Provisioner
from credit_middleware.errors import ConfigurationError
from credit_middleware.problems import ProblemResponse, ledger_down, problem

__all__ = ["DEFAULT_MOCK", "ChatEndpoint", "chat_route", "warm_up"]

log = logging.getLogger("examples.chat")

DEFAULT_MOCK = "Hello from credit-middleware! This answer was mocked, and metered to the µc."
#: The request fields passed on to LiteLLM; anything else in the body is ignored.
_PASSED = (
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
)


def _loading(retry_after: int) -> ProblemResponse:
    body = {
        "type": "urn:credit-middleware:problem:llm-loading",
        "title": "LLM not ready yet",
        "status": 503,
        "detail": "LiteLLM is still loading on this worker; retry shortly",
        "retry_after": retry_after,
    }
    return ProblemResponse(body, status_code=503, headers={"Retry-After": str(retry_after)})


def _provider_error(status: int, detail: str) -> ProblemResponse:
    body = {
        "type": "urn:credit-middleware:problem:llm-unavailable",
        "title": "LLM call failed",
        "status": status,
        "detail": detail,
    }
    return ProblemResponse(body, status_code=status)


class _NotReady(Exception):
    """LiteLLM is still loading."""


class ChatEndpoint:
    """The endpoint; its ``CreditedLLM`` (and LiteLLM) is built at ``startup()``, in a thread,
    or else on the first request (in a thread too). ``ready_timeout``: how long a request
    waits for it before a 503 with ``Retry-After: retry_after``."""

    def __init__(
        self,
        provisioner: Provisioner,
        *,
        models: Sequence[str] = ("gpt-4o-mini",),
        mock_response: str | None = DEFAULT_MOCK,
        llm_options: dict[str, Any] | None = None,
        ready_timeout: float = 2.0,
        retry_after: int = 5,
    ) -> None:
        self.provisioner = provisioner
        self.models = tuple(models)
        self.mock_response = mock_response
        self.llm_options = llm_options or {}
        self.ready_timeout = ready_timeout
        self.retry_after = retry_after
        self._llm: Any = None
        self._building: asyncio.Future[Any] | None = None

    def _build(self) -> Any:
        from credit_middleware.integrations.litellm import CreditedLLM  # imports LiteLLM

        return CreditedLLM(self.provisioner, **self.llm_options)

    def _start_building(self) -> asyncio.Future[Any]:
        if self._building is None:
            self._building = asyncio.ensure_future(asyncio.to_thread(self._build))
            self._building.add_done_callback(_report)
        return self._building

    async def llm(self) -> Any:
        """The wrapper, built once, in a worker thread: importing LiteLLM on the event loop
        would stall every request of this worker for seconds. Raises ``_NotReady`` when it is
        not built within ``ready_timeout``."""
        if self._llm is None:
            building = self._start_building()
            done, _ = await asyncio.wait({building}, timeout=self.ready_timeout)
            if not done:
                raise _NotReady
            try:
                self._llm = building.result()
            except ConfigurationError:
                self._building = None  # e.g. LiteLLM not installed: say so on every call
                raise
        return self._llm

    async def startup(self, *, wait: bool = False) -> None:
        """Start importing and initialising LiteLLM (in a thread) before the first request
        needs it; with ``wait``, until it is done. An app without LiteLLM still starts (its
        chat route answers 501)."""
        building = self._start_building()
        if wait:
            await asyncio.wait([building])

    async def handle(self, request: Request) -> Response:
        identity = getattr(request.state, "credit_identity", None)
        if not isinstance(identity, Identity):
            account = getattr(request.state, "credit_account_id", None)
            if not isinstance(account, str):
                return problem("unauthenticated", "no caller identity on this request")
            identity = Identity(account, source="request")
        kwargs = await self._kwargs(request)
        if isinstance(kwargs, Response):
            return kwargs
        try:
            llm = await self.llm()
        except _NotReady:
            return _loading(self.retry_after)
        except ConfigurationError as exc:
            return _provider_error(501, str(exc))
        charge_id = getattr(request.state, "credit_charge_id", None)
        key = charge_id if isinstance(charge_id, str) and charge_id else None
        return await self._answer(llm, identity, kwargs, key)

    async def _kwargs(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = await request.json()
        except ValueError:
            return problem("invalid-request", "the body must be JSON")
        if not isinstance(body, dict):
            return problem("invalid-request", "the body must be a JSON object")
        model = body.get("model", self.models[0] if self.models else None)
        if not isinstance(model, str) or (self.models and model not in self.models):
            return problem("invalid-request", f"model must be one of {list(self.models)}")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or len(messages) > 256:
            return problem("invalid-request", "messages must be a list of 1-256 messages")
        for message in messages:
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                return problem("invalid-request", "each message needs a role and a content")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            return problem("invalid-request", "stream must be true or false")
        kwargs: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        kwargs.update({k: body[k] for k in _PASSED if body.get(k) is not None})
        if self.mock_response is not None:
            kwargs["mock_response"] = self.mock_response
        return kwargs

    async def _answer(
        self, llm: Any, identity: Identity, kwargs: dict[str, Any], key: str | None
    ) -> Response:
        from credit_middleware.integrations.litellm import UnknownModelPrice

        try:
            result = await llm.acompletion(identity, key=key, **kwargs)
        except InsufficientCredits as exc:
            return problem(
                "insufficient-credits",
                "not enough credits for the worst case of this call",
                required=str(exc.required),
                available=str(exc.available),
                tier=exc.tier,
            )
        except UnknownModelPrice as exc:
            return problem("invalid-request", str(exc))
        except BackendUnavailable:  # the ledger, not the provider: 503 with Retry-After
            return ledger_down()
        except Exception as exc:  # LiteLLM's provider errors; the hold was released
            status = getattr(exc, "status_code", None)
            code = 504 if status in (408, 504) else 502
            return _provider_error(code, type(exc).__name__)
        if kwargs["stream"]:
            return StreamingResponse(_sse(result), media_type="text/event-stream")
        receipt = result._hidden_params.get("credit_receipt")
        headers = {}
        if receipt is not None:
            headers = {
                "Credit-Cost": str(receipt.entry.amount),
                "Credit-Balance": str(receipt.available),
            }
        return JSONResponse(result.model_dump(), headers=headers)


async def _sse(stream: Any) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them; a client that goes away mid-stream closes the
    stream (``finally``), which charges what was generated so far."""
    try:
        async for chunk in stream:
            yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
        receipt = stream.receipt
        if receipt is not None:  # an SSE comment: OpenAI clients ignore it, people can read it
            yield f": credit-cost {receipt.entry.amount} credit-balance {receipt.available}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        await stream.aclose()


def _report(building: asyncio.Future[Any]) -> None:
    if not building.cancelled() and building.exception() is not None:
        log.warning("chat endpoint unavailable: %s", building.exception())


async def warm_up(app: Any, *, wait: bool = False, routes: Iterable[Any] | None = None) -> None:
    """Start every chat endpoint among ``app``'s routes: LiteLLM is imported in a thread
    while the app starts serving (``wait=True`` waits for it); a chat request arriving
    before it is ready waits for it, nothing else does."""
    for route in app.routes if routes is None else routes:
        endpoint = getattr(getattr(route, "endpoint", None), "__self__", None)
        if isinstance(endpoint, ChatEndpoint):
            await endpoint.startup(wait=wait)


def chat_route(
    provisioner: Provisioner,
    *,
    path: str = "/v1/chat/completions",
    models: Sequence[str] = ("gpt-4o-mini",),
    mock_response: str | None = DEFAULT_MOCK,
    ready_timeout: float = 2.0,
    retry_after: int = 5,
    **llm_options: Any,
) -> Route:
    """The route; ``llm_options`` go to ``CreditedLLM`` (``price_multipliers``, ...)."""
    endpoint = ChatEndpoint(
        provisioner,
        models=models,
        mock_response=mock_response,
        llm_options=llm_options,
        ready_timeout=ready_timeout,
        retry_after=retry_after,
    )
    return Route(path, endpoint.handle, methods=["POST"], name="chat_completions")
