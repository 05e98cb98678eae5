"""The public API's own routes: generation with contexts, and the contexts themselves (docs/API.md)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from tierflow.api import errors
from tierflow.api.auth import caller
from tierflow.api.deployment_client import DeploymentClient
from tierflow.api.recent import RecentRequests
from tierflow.api.schemas import (
    ContextDetail,
    ContextList,
    ContextSummary,
    DeviceReport,
    GenerateBody,
    GenerateReply,
    Hop,
    MigrateBody,
    MigrateReply,
    Route,
    Shard,
)
from tierflow.context.store import ContextStore
from tierflow.engine.conversations import Conversations, Finished
from tierflow.engine.image_contexts import ImageContexts
from tierflow.engine.image_routing import RoutedImages
from tierflow.engine.images import TieredImages
from tierflow.engine.inspection import TierDetection, TieredDetectors
from tierflow.engine.sharded import GenerationEvent
from tierflow.router.energy import BatteryState
from tierflow.types.tasks import TaskKind

router = APIRouter()


@dataclass
class APIState:
    """What the routes work with; kept on ``app.state.tierflow``."""

    conversations: Conversations
    store: ContextStore
    images: TieredImages | None = None  # image generation on the tiers
    routed_images: RoutedImages | None = None  # ... routed by SLA (``POST /v1/images/generations``)
    deployment: DeploymentClient | None = None  # the local deployment's control (tierflow up), if any
    detectors: TieredDetectors | None = None  # crack inspection on the tiers (``POST /v1/inspections``)
    image_contexts: ImageContexts | None = None  # the last picture of each image context (follow-ups)
    recent: RecentRequests = field(default_factory=RecentRequests)

    def __post_init__(self) -> None:
        self.conversations.on_finished.append(self.recent.text)
        if self.routed_images is not None:  # a tier out of reach on the old network may be back
            self.conversations.on_network.append(self.routed_images.refresh)
        if self.detectors is not None:  # the matrix learns each tier's crack detection time
            self.detectors.on_detected.append(self._observe_detection)

    def _observe_detection(self, found: TierDetection) -> None:
        self.conversations.router.matrix.observe(TaskKind.CRACK_DETECT, found.tier, found.wall_s)

    @property
    def model_name(self) -> str:
        return self.conversations.lm.model_name


def state_of(request: Request) -> APIState:
    state: APIState = request.app.state.tierflow
    return state


def route_of(done: Finished) -> Route:
    outcome = done.outcome
    spans = {t.value: str(s) for t, s in outcome.spans.items()}
    tiers = ["device", *(t for t in spans if t != "device")]
    return Route(
        tiers=tiers,
        spans=spans,
        hops=[
            Hop.model_validate({"from": a, "to": b, "seconds": s})
            for (a, b), s in outcome.stats.hop_s.items()
        ],
        compute_s=dict(outcome.stats.compute_s),
        ttft_s=outcome.ttft_s,
        tokens_per_s=outcome.tokens_per_s,
        prompt_tokens=outcome.prompt_tokens,
        cached_tokens=outcome.cached_tokens,
        events=outcome.events,
        decision=done.route.to_dict() if done.route is not None else None,
    )


def reply_of(done: Finished) -> GenerateReply:
    return GenerateReply(
        text=done.text,
        context_id=done.record.context_id,
        expires_in=round(done.record.expires_in(time.time()), 3),
        tokens=len(done.outcome.generated),
        route=route_of(done),
    )


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=True)}\n\n".encode()


async def event_stream(items: AsyncIterator[GenerationEvent | Finished]) -> AsyncIterator[bytes]:
    """Server-sent events of a generation: ``token``, ``event``, then ``done`` (or ``error``)."""
    try:
        async for item in items:
            if isinstance(item, Finished):
                yield sse("done", reply_of(item).model_dump(by_alias=True))
            elif item.token is not None:
                yield sse("token", {"text": item.text, "token": item.token})
            elif item.event is not None:
                yield sse("event", item.event)
    except Exception as exc:  # the status line is sent already: the error travels as an event
        _, body = errors.error_body(exc)
        yield sse("error", body)


GENERATE_ERRORS = errors.responses(401, 403, 404, 410, 422, 503)


@router.get("/routing/matrix", responses=errors.responses(401))
async def routing_matrix(request: Request, owner: str = Depends(caller)) -> dict[str, Any]:
    """The task-resource matrix (expected latency per task kind and tier, learned online), the
    routing rules, the energy policy and the device's battery and metered state."""
    return state_of(request).conversations.router.snapshot()


@router.put("/routing/device", responses=errors.responses(401, 422))
async def report_device(body: DeviceReport, request: Request, owner: str = Depends(caller)) -> dict[str, Any]:
    """Report the device's battery, metered state and access network for the requests that follow
    (the deployment's device: one set of conditions for every caller)."""
    conversations = state_of(request).conversations
    battery = BatteryState.parse(body.battery) if body.battery is not None else None
    await conversations.report_device(battery, body.metered, body.network)
    device: dict[str, Any] = conversations.router.snapshot()["device"]
    return device


@router.post(
    "/generate",
    response_model=GenerateReply,
    responses={
        **GENERATE_ERRORS,
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "The reply, or with stream=true server-sent events",
        },
    },
)
async def generate(body: GenerateBody, request: Request, owner: str = Depends(caller)) -> Any:
    """Generate across the tiers; a ``context_id`` continues that conversation."""
    state = state_of(request)
    sla, battery = body.routing()
    if body.network is not None:
        await state.conversations.report_device(network=body.network)
    items = state.conversations.generate(
        owner,
        body.prompt,
        body.config(),
        context_id=body.context_id,
        expires_in=body.expires_in,
        sla=sla,
        battery=battery,
        metered=body.metered,
        pin=body.tier,
    )
    if body.stream:
        first = await anext(items)  # errors before the first token get their status code
        return StreamingResponse(event_stream(_prepend(first, items)), media_type="text/event-stream")
    async for item in items:
        if isinstance(item, Finished):
            return reply_of(item)
    raise RuntimeError("generation ended without an outcome")


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


@router.get("/contexts", response_model=ContextList, responses=errors.responses(401))
async def list_contexts(request: Request, owner: str = Depends(caller)) -> ContextList:
    """The caller's live contexts."""
    state = state_of(request)
    now = time.time()
    records = state.store.list(owner)
    return ContextList(
        contexts=[
            ContextSummary(
                context_id=r.context_id, expires_in=round(r.expires_in(now), 3), tokens=len(r.tokens)
            )
            for r in records
        ]
    )


@router.get(
    "/contexts/{context_id}", response_model=ContextDetail, responses=errors.responses(401, 403, 404, 410)
)
async def get_context(context_id: str, request: Request, owner: str = Depends(caller)) -> ContextDetail:
    """One context: its tokens, which tier holds which layers, and the KV each tier holds for it."""
    state = state_of(request)
    record = await state.conversations.get(context_id, owner)
    shards = await state.conversations.lm.shards(context_id)
    return ContextDetail(
        context_id=record.context_id,
        expires_in=round(record.expires_in(time.time()), 3),
        tokens=len(record.tokens),
        spans=record.spans,
        shards={t: Shard.model_validate(s) for t, s in shards.items()},
    )


@router.delete("/contexts/{context_id}", status_code=204, responses=errors.responses(401, 403, 404, 410))
async def delete_context(context_id: str, request: Request, owner: str = Depends(caller)) -> Response:
    """Erase the context on every tier (its KV overwritten before release) and in the store."""
    await state_of(request).conversations.delete(context_id, owner)
    return Response(status_code=204)


@router.post(
    "/contexts/{context_id}/migrate",
    response_model=MigrateReply,
    responses=errors.responses(401, 403, 404, 410, 422, 503),
)
async def migrate(
    context_id: str, body: MigrateBody, request: Request, owner: str = Depends(caller)
) -> MigrateReply:
    """Move the KV of some layers of a context to another tier; generation continues there."""
    record, moved = await state_of(request).conversations.migrate(context_id, owner, body.layers, body.to)
    return MigrateReply(context_id=record.context_id, spans=record.spans, moved=moved)
