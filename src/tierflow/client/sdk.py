"""``tierflow.Client`` and ``tierflow.AsyncClient``: a deployment's public HTTP API from Python.

They speak only HTTP to the entry point (docs/API.md), so an app that imports them needs neither
ONNX Runtime nor gRPC at run time. Every failure is a tierflow error: the API's error statuses
map onto the error tree (:mod:`tierflow.client.errors`), and an entry point that cannot be
reached is a :class:`~tierflow.errors.TierUnavailableError` naming its URL.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, Generator
from types import TracebackType
from typing import TypeVar

import httpx

from tierflow.client import _protocol as api
from tierflow.client.models import (
    JSON,
    ClipResult,
    ContextInfo,
    DoneEvent,
    GenerateResult,
    ImageResult,
    InspectionResult,
    MigrateResult,
    StreamEvent,
)
from tierflow.client.sse import aiter_sse, iter_sse

T = TypeVar("T")


def edit_fields(
    size: int | None, strength: float | None, seed: int | None, sla: JSON | None, tier: str | None,
    context_id: str | None = None,
) -> dict[str, str]:
    """The form fields of ``POST /v1/images/edits`` besides the prompt (None: the server's default)."""
    fields = {"size": f"{size}x{size}" if size else None, "strength": strength, "seed": seed,
              "sla": json.dumps(sla) if sla is not None else None, "tier": tier, "context_id": context_id}
    return {k: str(v) for k, v in fields.items() if v is not None}


def clip_body(
    prompt: str, frames: int, size: int, fps: float | None, seed: int | None, sla: JSON | None,
    tier: str | None,
) -> JSON:
    """The body of ``POST /v1/clips``."""
    body = image_body(prompt, size, seed, sla, tier)
    body["frames"] = frames
    if fps is not None:
        body["fps"] = fps
    return body


def inspection_body(frame: bytes, escalate_below: float | None, escalate: bool) -> JSON:
    """The body of ``POST /v1/inspections`` (``frame``: PNG or JPEG bytes)."""
    body: JSON = {"image": base64.b64encode(frame).decode("ascii"), "escalate": escalate}
    if escalate_below is not None:
        body["escalate_below"] = escalate_below
    return body


def image_body(
    prompt: str, size: int | None, seed: int | None, sla: JSON | None, tier: str | None,
    context_id: str | None = None,
) -> JSON:
    """The body of ``POST /v1/images/generations`` (None fields left out: the server's defaults)."""
    body: JSON = {"prompt": prompt}
    if size is not None:
        body["size"] = f"{size}x{size}"
    for name, value in (("seed", seed), ("sla", sla), ("tier", tier), ("context_id", context_id)):
        if value is not None:
            body[name] = value
    return body


class Client:
    """A synchronous client of one deployment's entry point.

    ``base_url`` defaults to ``$TIERFLOW_URL`` (else ``http://127.0.0.1:8700``), ``api_key`` to
    ``$TIERFLOW_API_KEY``; ``transport`` replaces httpx's network transport (tests, proxies).
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = api.resolve_url(base_url)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=api.headers(api.resolve_api_key(api_key)),
            timeout=timeout,
            transport=transport,
        )

    def generate(
        self,
        prompt: str,
        *,
        context_id: str | None = None,
        max_tokens: int = 64,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repeat_penalty: float | None = None,
        seed: int | None = None,
        expires_in: float | None = None,
        sla: JSON | None = None,
        battery: JSON | None = None,
        metered: bool | None = None,
        network: str | None = None,
        tier: str | None = None,
    ) -> GenerateResult:
        """Generate up to ``max_tokens`` after ``prompt``; ``context_id`` continues a conversation.

        An option left None takes the server's default. The result's ``context_id`` continues
        this conversation; ``route`` says which tier ran which layers and how fast.
        """
        request = api.generate_request(
            prompt=prompt, context_id=context_id, max_tokens=max_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, repeat_penalty=repeat_penalty, seed=seed, expires_in=expires_in,
            sla=sla, battery=battery, metered=metered, network=network, tier=tier, stream=False,
        )
        return self._call(api.generate(request))

    def stream(
        self,
        prompt: str,
        *,
        context_id: str | None = None,
        max_tokens: int = 64,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repeat_penalty: float | None = None,
        seed: int | None = None,
        expires_in: float | None = None,
        sla: JSON | None = None,
        battery: JSON | None = None,
        metered: bool | None = None,
        network: str | None = None,
        tier: str | None = None,
    ) -> Generator[StreamEvent, None, None]:
        """:meth:`generate`, token by token: :class:`TokenEvent` s, then one :class:`DoneEvent`.

        The request is sent when iteration starts; leaving the loop early (or ``close()``) closes
        the stream.
        An error after streaming began raises the mapped tierflow error.
        """
        request = api.generate_request(
            prompt=prompt, context_id=context_id, max_tokens=max_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, repeat_penalty=repeat_penalty, seed=seed, expires_in=expires_in,
            sla=sla, battery=battery, metered=metered, network=network, tier=tier, stream=True,
        )
        sending = self._http.stream("POST", "/generate", json=request.body(), headers=api.SSE_ACCEPT)
        with api.reaching(self.base_url), sending as r:
            if not r.is_success or api.is_json(r):
                r.read()
                yield DoneEvent(result=api.parse(GenerateResult, r))
                return
            for sse in iter_sse(r.iter_bytes()):
                event = api.stream_event(sse, self.base_url)
                if event is not None:
                    yield event
                    if isinstance(event, DoneEvent):
                        return
        raise api.ended_early(self.base_url)

    def context(self, context_id: str) -> ContextInfo:
        """One conversation of the caller: its lifetime, tokens, and which tier holds which KV shard."""
        return self._call(api.context(context_id))

    def contexts(self) -> list[ContextInfo]:
        """The caller's conversations."""
        return self._call(api.contexts())

    def delete_context(self, context_id: str) -> None:
        """Drop a conversation and its KV shards on every tier."""
        self._call(api.delete_context(context_id))

    def migrate(self, context_id: str, layers: str, to: str) -> MigrateResult:
        """Move the KV shard of ``layers`` (``"a-b"``) of a conversation to the tier ``to``."""
        return self._call(api.migrate(context_id, layers, to))

    def models(self) -> list[str]:
        """The names of the models the deployment serves."""
        return self._call(api.models())

    def image(
        self,
        prompt: str,
        *,
        size: int | None = None,
        seed: int | None = None,
        sla: JSON | None = None,
        tier: str | None = None,
        context_id: str | None = None,
    ) -> ImageResult:
        """One image for ``prompt`` of up to ``size`` px (None: 512), made where the router chooses
        (``tier``: pinned). With ``context_id`` (a result's), ``prompt`` is a follow-up to that picture
        ("make it blue", "higher resolution"; ``size`` None: the picture's, or the next level up)."""
        return self._call(api.image(image_body(prompt, size, seed, sla, tier, context_id)))

    def clip(
        self,
        prompt: str,
        *,
        frames: int = 16,
        size: int = 512,
        fps: float | None = None,
        seed: int | None = None,
        sla: JSON | None = None,
        tier: str | None = None,
    ) -> ClipResult:
        """A clip of ``prompt`` of up to ``frames`` frames and ``size`` px (the router may choose fewer or
        smaller within the SLA), as an animated GIF."""
        return self._call(api.clip(clip_body(prompt, frames, size, fps, seed, sla, tier)))

    def edit(
        self,
        picture: bytes,
        prompt: str,
        *,
        mask: bytes | None = None,
        size: int | None = None,
        strength: float | None = None,
        seed: int | None = None,
        sla: JSON | None = None,
        tier: str | None = None,
        context_id: str | None = None,
    ) -> ImageResult:
        """``picture`` (PNG bytes) repainted under ``prompt``: where ``mask`` (a PNG: transparent or,
        without alpha, white pixels) says, else everywhere from its noised self at ``strength``. The
        result's ``context_id`` (``context_id``'s when given) takes follow-ups (:meth:`image`)."""
        fields = edit_fields(size, strength, seed, sla, tier, context_id)
        return self._call(api.edit_image(picture, prompt, mask, fields))

    def inspect(
        self, frame: bytes, *, escalate_below: float | None = None, escalate: bool = True
    ) -> InspectionResult:
        """Is there a crack in ``frame`` (PNG or JPEG bytes), and where: the edge's detector answers, a
        frame it is less sure of than ``escalate_below`` goes to the cloud's (unless ``escalate`` is off)."""
        return self._call(api.inspect(inspection_body(frame, escalate_below, escalate)))

    def set_link(self, name: str, profile: str) -> JSON:
        """Change a local deployment's SIMULATED link (``device-edge``, ``device-cloud``, ``edge-cloud``)."""
        return self._call(api.set_link(name, profile))

    def deployment(self) -> JSON:
        """``GET /dashboard/state``: the tiers, the links and their profiles, plans, recent requests."""
        return self._call(api.dashboard_state())

    def tier_down(self, tier: str) -> JSON:
        """Stop a local deployment's edge or cloud node (a SIMULATED outage)."""
        return self._call(api.switch_tier(tier, "down"))

    def tier_up(self, tier: str) -> JSON:
        """Start that node again."""
        return self._call(api.switch_tier(tier, "up"))

    def routing_matrix(self) -> JSON:
        """``GET /routing/matrix``: expected latency per task kind and tier, the rules, the energy policy."""
        return self._call(api.routing_matrix())

    def report_device(
        self, battery: JSON | None = None, metered: bool | None = None, network: str | None = None
    ) -> JSON:
        """Tell the router the device's battery (``{"level", "charging"}``), metered state and access
        network (a link profile name: ``wifi``, ``4g``, ``offline``...)."""
        return self._call(api.report_device(battery, metered, network))

    def health(self) -> bool:
        """Whether the entry point answers ``/healthz``; False (not an error) when it cannot be reached."""
        try:
            return self._http.get("/healthz").is_success
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, call: api.Call[T]) -> T:
        with api.reaching(self.base_url):
            return call.read(
                self._http.request(call.method, call.path, json=call.json, data=call.form, files=call.files)
            )


class AsyncClient:
    """:class:`Client` for asyncio: the same calls, awaited; :meth:`stream` is an async iterator."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = api.resolve_url(base_url)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=api.headers(api.resolve_api_key(api_key)),
            timeout=timeout,
            transport=transport,
        )

    async def generate(
        self,
        prompt: str,
        *,
        context_id: str | None = None,
        max_tokens: int = 64,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repeat_penalty: float | None = None,
        seed: int | None = None,
        expires_in: float | None = None,
        sla: JSON | None = None,
        battery: JSON | None = None,
        metered: bool | None = None,
        network: str | None = None,
        tier: str | None = None,
    ) -> GenerateResult:
        """See :meth:`Client.generate`."""
        request = api.generate_request(
            prompt=prompt, context_id=context_id, max_tokens=max_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, repeat_penalty=repeat_penalty, seed=seed, expires_in=expires_in,
            sla=sla, battery=battery, metered=metered, network=network, tier=tier, stream=False,
        )
        return await self._call(api.generate(request))

    async def stream(
        self,
        prompt: str,
        *,
        context_id: str | None = None,
        max_tokens: int = 64,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repeat_penalty: float | None = None,
        seed: int | None = None,
        expires_in: float | None = None,
        sla: JSON | None = None,
        battery: JSON | None = None,
        metered: bool | None = None,
        network: str | None = None,
        tier: str | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """See :meth:`Client.stream`. Leaving the loop early: wrap it in ``contextlib.aclosing``."""
        request = api.generate_request(
            prompt=prompt, context_id=context_id, max_tokens=max_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, repeat_penalty=repeat_penalty, seed=seed, expires_in=expires_in,
            sla=sla, battery=battery, metered=metered, network=network, tier=tier, stream=True,
        )
        with api.reaching(self.base_url):
            sending = self._http.stream("POST", "/generate", json=request.body(), headers=api.SSE_ACCEPT)
            async with sending as r:
                if not r.is_success or api.is_json(r):
                    await r.aread()
                    yield DoneEvent(result=api.parse(GenerateResult, r))
                    return
                async for sse in aiter_sse(r.aiter_bytes()):
                    event = api.stream_event(sse, self.base_url)
                    if event is not None:
                        yield event
                        if isinstance(event, DoneEvent):
                            return
        raise api.ended_early(self.base_url)

    async def context(self, context_id: str) -> ContextInfo:
        """See :meth:`Client.context`."""
        return await self._call(api.context(context_id))

    async def contexts(self) -> list[ContextInfo]:
        """See :meth:`Client.contexts`."""
        return await self._call(api.contexts())

    async def delete_context(self, context_id: str) -> None:
        """See :meth:`Client.delete_context`."""
        await self._call(api.delete_context(context_id))

    async def migrate(self, context_id: str, layers: str, to: str) -> MigrateResult:
        """See :meth:`Client.migrate`."""
        return await self._call(api.migrate(context_id, layers, to))

    async def models(self) -> list[str]:
        """See :meth:`Client.models`."""
        return await self._call(api.models())

    async def image(
        self,
        prompt: str,
        *,
        size: int | None = None,
        seed: int | None = None,
        sla: JSON | None = None,
        tier: str | None = None,
        context_id: str | None = None,
    ) -> ImageResult:
        """See :meth:`Client.image`."""
        return await self._call(api.image(image_body(prompt, size, seed, sla, tier, context_id)))

    async def clip(
        self,
        prompt: str,
        *,
        frames: int = 16,
        size: int = 512,
        fps: float | None = None,
        seed: int | None = None,
        sla: JSON | None = None,
        tier: str | None = None,
    ) -> ClipResult:
        """See :meth:`Client.clip`."""
        return await self._call(api.clip(clip_body(prompt, frames, size, fps, seed, sla, tier)))

    async def edit(
        self,
        picture: bytes,
        prompt: str,
        *,
        mask: bytes | None = None,
        size: int | None = None,
        strength: float | None = None,
        seed: int | None = None,
        sla: JSON | None = None,
        tier: str | None = None,
        context_id: str | None = None,
    ) -> ImageResult:
        """See :meth:`Client.edit`."""
        fields = edit_fields(size, strength, seed, sla, tier, context_id)
        return await self._call(api.edit_image(picture, prompt, mask, fields))

    async def inspect(
        self, frame: bytes, *, escalate_below: float | None = None, escalate: bool = True
    ) -> InspectionResult:
        """See :meth:`Client.inspect`."""
        return await self._call(api.inspect(inspection_body(frame, escalate_below, escalate)))

    async def set_link(self, name: str, profile: str) -> JSON:
        """See :meth:`Client.set_link`."""
        return await self._call(api.set_link(name, profile))

    async def deployment(self) -> JSON:
        """See :meth:`Client.deployment`."""
        return await self._call(api.dashboard_state())

    async def tier_down(self, tier: str) -> JSON:
        """See :meth:`Client.tier_down`."""
        return await self._call(api.switch_tier(tier, "down"))

    async def tier_up(self, tier: str) -> JSON:
        """See :meth:`Client.tier_up`."""
        return await self._call(api.switch_tier(tier, "up"))

    async def routing_matrix(self) -> JSON:
        """See :meth:`Client.routing_matrix`."""
        return await self._call(api.routing_matrix())

    async def report_device(
        self, battery: JSON | None = None, metered: bool | None = None, network: str | None = None
    ) -> JSON:
        """See :meth:`Client.report_device`."""
        return await self._call(api.report_device(battery, metered, network))

    async def health(self) -> bool:
        """See :meth:`Client.health`."""
        try:
            return (await self._http.get("/healthz")).is_success
        except httpx.HTTPError:
            return False

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(self, call: api.Call[T]) -> T:
        with api.reaching(self.base_url):
            answer = await self._http.request(
                call.method, call.path, json=call.json, data=call.form, files=call.files
            )
            return call.read(answer)
