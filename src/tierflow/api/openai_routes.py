"""OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

A chat request carries the whole conversation each time; its tokens are matched against the
caller's earlier (implicit) conversations, so the KV of the shared prefix is reused and
reported as ``usage.prompt_tokens_details.cached_tokens``. The chat template is plain text
(``role: content`` lines, then ``assistant:``): the bundled model has no chat template of its own.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from tierflow.api import errors
from tierflow.api.auth import caller
from tierflow.api.routes import state_of
from tierflow.api.schemas import ChatBody, ChatMessage, CompletionBody
from tierflow.engine.conversations import Finished
from tierflow.engine.sharded import GenerationEvent
from tierflow.errors import ModelNotFoundError

router = APIRouter(prefix="/v1")
OPENAI_ERRORS = errors.responses(401, 403, 404, 410, 422, 503)


def chat_prompt(messages: list[ChatMessage]) -> str:
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"


def _usage(done: Finished) -> dict[str, Any]:
    prompt, completion = done.outcome.prompt_tokens, len(done.outcome.generated)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": done.outcome.cached_tokens},
    }


def _finish_reason(done: Finished, eos: int | None) -> str:
    generated = done.outcome.generated
    return "stop" if generated and generated[-1] == eos else "length"


def _check_model(request: Request, name: str) -> None:
    served = state_of(request).model_name
    if name not in (served, "tierflow"):
        raise ModelNotFoundError(f"this deployment serves model '{served}', not '{name}'")


@router.get("/models")
async def models(request: Request, owner: str = Depends(caller)) -> dict[str, Any]:
    """The model this deployment serves (OpenAI's list format)."""
    name = state_of(request).model_name
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "tierflow"}]}


async def _run(
    request: Request, owner: str, prompt: str, body: ChatBody | CompletionBody, *, chat: bool
) -> Any:
    _check_model(request, body.model)
    state = state_of(request)
    sla, battery = body.routing()
    if body.network is not None:
        await state.conversations.report_device(network=body.network)
    items = state.conversations.generate(
        owner,
        state.conversations.lm.tokenizer.encode(prompt),
        body.config(),
        context_id=body.context_id,
        whole=body.context_id is None,
        sla=sla,
        battery=battery,
        metered=body.metered,
        pin=body.tier,
    )
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    eos = state.conversations.lm.eos
    if body.stream:
        first = await anext(items)
        return StreamingResponse(
            _chunks(first, items, ident, created, body.model, chat, eos), media_type="text/event-stream"
        )
    async for item in items:
        if isinstance(item, Finished):
            reason = _finish_reason(item, eos)
            choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": item.text}
            else:
                choice["text"] = item.text
            return {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": body.model,
                "choices": [choice],
                "usage": _usage(item),
                "context_id": item.record.context_id,
            }
    raise RuntimeError("generation ended without an outcome")


async def _chunks(
    first: Any,
    rest: AsyncIterator[GenerationEvent | Finished],
    ident: str,
    created: int,
    model: str,
    chat: bool,
    eos: int | None,
) -> AsyncIterator[bytes]:
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, reason: str | None, usage: dict[str, Any] | None = None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
        if chat:
            choice["delta"] = {} if delta is None else {"role": "assistant", "content": delta}
        else:
            choice["text"] = delta or ""
        body: dict[str, Any] = {
            "id": ident,
            "object": kind,
            "created": created,
            "model": model,
            "choices": [choice],
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=True)}\n\n".encode()

    async def items() -> AsyncIterator[GenerationEvent | Finished]:
        yield first
        async for item in rest:
            yield item

    try:
        async for item in items():
            if isinstance(item, Finished):
                yield chunk(None, _finish_reason(item, eos), _usage(item))
            elif item.token is not None and item.text:
                yield chunk(item.text, None)
    except Exception as exc:  # the stream has begun: OpenAI clients read an error object
        _, body = errors.error_body(exc)
        error = {"error": {"message": body["detail"], "type": body["error"]}}
        yield f"data: {json.dumps(error)}\n\n".encode()
    yield b"data: [DONE]\n\n"


@router.post("/chat/completions", responses=OPENAI_ERRORS)
async def chat_completions(body: ChatBody, request: Request, owner: str = Depends(caller)) -> Any:
    """OpenAI chat completions (streaming with ``stream``); prefix-cached across a conversation."""
    return await _run(request, owner, chat_prompt(body.messages), body, chat=True)


@router.post("/completions", responses=OPENAI_ERRORS)
async def completions(body: CompletionBody, request: Request, owner: str = Depends(caller)) -> Any:
    """OpenAI text completions (streaming with ``stream``)."""
    return await _run(request, owner, body.prompt, body, chat=False)
