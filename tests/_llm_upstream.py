"""A fake OpenAI-compatible provider for the LiteLLM proxy tests: real HTTP, fixed answers.

Serves chat completions (plain and streamed), the Responses API (plain and streamed),
embeddings, images, transcription, speech, moderation and Cohere-style rerank, with usage in
every answer, so LiteLLM prices each call the way it prices the real provider's. It counts the
calls it got (``GET /control/calls``), and a chat stream for a model whose name contains
``gated`` stops after two chunks until ``POST /control/open`` (so a test can break the ledger
mid-stream). Run: ``python tests/_llm_upstream.py PORT``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TEXT = "Hello from the fake provider: every token of this answer is billed."
WORDS = TEXT.split(" ")
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()

calls: Counter[str] = Counter()
gate = asyncio.Event()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _prompt_tokens(body: dict[str, Any]) -> int:
    return 7 + len(json.dumps(body.get("messages") or body.get("input") or "")) // 8


async def chat(request: Request) -> Response:
    body = await request.json()
    model = body.get("model", "")
    calls[f"chat:{model}"] += 1
    prompt, completion = _prompt_tokens(body), len(WORDS) + 2
    if not body.get("stream"):
        return JSONResponse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": TEXT},
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(prompt, completion),
            }
        )
    usage = (body.get("stream_options") or {}).get("include_usage")

    async def events() -> AsyncIterator[str]:
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model}
        base["created"] = int(time.time())
        for i, word in enumerate(WORDS):
            if i == 2 and "gated" in model:
                await gate.wait()
            delta = {"content": (" " if i else "") + word}
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"
        done = {"index": 0, "delta": {}, "finish_reason": "stop"}
        yield f"data: {json.dumps({**base, 'choices': [done]})}\n\n"
        if usage:
            tail = {**base, "choices": [], "usage": _usage(prompt, completion)}
            yield f"data: {json.dumps(tail)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _response(model: str, prompt: int, status: str = "completed") -> dict[str, Any]:
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_fake",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": TEXT, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": prompt,
            "output_tokens": len(WORDS) + 2,
            "total_tokens": prompt + len(WORDS) + 2,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


async def responses(request: Request) -> Response:
    body = await request.json()
    model = body.get("model", "")
    calls[f"responses:{model}"] += 1
    prompt = _prompt_tokens(body)
    if not body.get("stream"):
        return JSONResponse(_response(model, prompt))

    async def events() -> AsyncIterator[str]:
        created = {**_response(model, prompt, "in_progress"), "output": [], "usage": None}
        yield _sse("response.created", {"response": created, "sequence_number": 0})
        for i, word in enumerate(WORDS, start=1):
            delta = {
                "item_id": "msg_fake",
                "output_index": 0,
                "content_index": 0,
                "delta": (" " if i > 1 else "") + word,
                "sequence_number": i,
            }
            yield _sse("response.output_text.delta", delta)
        final = {"response": _response(model, prompt), "sequence_number": len(WORDS) + 1}
        yield _sse("response.completed", final)

    return StreamingResponse(events(), media_type="text/event-stream")


def _sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


async def embeddings(request: Request) -> Response:
    body = await request.json()
    calls[f"embeddings:{body.get('model')}"] += 1
    prompt = _prompt_tokens(body)
    item = {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}
    usage = {"prompt_tokens": prompt, "total_tokens": prompt}
    return JSONResponse(
        {"object": "list", "data": [item], "model": body.get("model"), "usage": usage}
    )


async def images(request: Request) -> Response:
    body = await request.json()
    calls[f"images:{body.get('model')}"] += 1
    n = int(body.get("n") or 1)
    out: dict[str, Any] = {"created": int(time.time()), "data": [{"b64_json": PNG}] * n}
    if "gpt-image" in str(body.get("model")):
        out["usage"] = {
            "input_tokens": 9,
            "output_tokens": 272 * n,
            "total_tokens": 9 + 272 * n,
            "input_tokens_details": {"text_tokens": 9, "image_tokens": 0},
        }
    return JSONResponse(out)


async def transcriptions(request: Request) -> Response:
    form = await request.form()
    calls[f"transcriptions:{form.get('model')}"] += 1
    return JSONResponse({"text": "hello ledger"})


async def speech(request: Request) -> Response:
    body = await request.json()
    calls[f"speech:{body.get('model')}"] += 1
    return Response(b"ID3" + b"\0" * 64, media_type="audio/mpeg")


async def moderations(request: Request) -> Response:
    body = await request.json()
    calls[f"moderations:{body.get('model')}"] += 1
    result = {"flagged": False, "categories": {}, "category_scores": {}}
    return JSONResponse({"id": "modr-fake", "model": body.get("model"), "results": [result]})


async def rerank(request: Request) -> Response:
    body = await request.json()
    calls[f"rerank:{body.get('model')}"] += 1
    docs = body.get("documents") or []
    results = [{"index": i, "relevance_score": 1 / (i + 1)} for i in range(len(docs))]
    meta = {"billed_units": {"search_units": 1}}
    return JSONResponse({"id": "rerank-fake", "results": results, "meta": meta})


async def control_calls(request: Request) -> Response:
    return JSONResponse(dict(calls))


async def control_open(request: Request) -> Response:
    gate.set()
    return JSONResponse({"open": True})


async def control_close(request: Request) -> Response:
    gate.clear()
    return JSONResponse({"open": False})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/images/generations", images, methods=["POST"]),
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/moderations", moderations, methods=["POST"]),
        Route("/v1/rerank", rerank, methods=["POST"]),
        Route("/v2/rerank", rerank, methods=["POST"]),
        Route("/control/calls", control_calls),
        Route("/control/open", control_open, methods=["POST"]),
        Route("/control/close", control_close, methods=["POST"]),
    ]
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
