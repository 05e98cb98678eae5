"""What the sync and the async client share: settings, the API's calls, reading the answers.

Each endpoint of docs/API.md is written once here as a :class:`Call` (method, path, body and
how to read the answer); :class:`~tierflow.client.sdk.Client` and ``AsyncClient`` only send
them, so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from tierflow.client.errors import error_for_event, error_for_response
from tierflow.client.models import (
    JSON,
    ClipResult,
    ContextInfo,
    DoneEvent,
    GenerateRequest,
    GenerateResult,
    ImageResult,
    InspectionResult,
    MigrateResult,
    StreamEvent,
    TokenEvent,
)
from tierflow.client.sse import SSEEvent
from tierflow.errors import InvalidInputError, RecoverableError, TierUnavailableError

URL_ENV = "TIERFLOW_URL"
API_KEY_ENV = "TIERFLOW_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8700"
SSE_ACCEPT = {"Accept": "text/event-stream"}

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def resolve_url(base_url: str | None) -> str:
    """``base_url``, else ``$TIERFLOW_URL``, else the local entry point ``tierflow up`` starts."""
    return (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    """``api_key``, else ``$TIERFLOW_API_KEY``; None (or empty): no Authorization header."""
    key = os.environ.get(API_KEY_ENV) if api_key is None else api_key
    return key or None


def headers(api_key: str | None) -> dict[str, str]:
    """The headers every call carries: the bearer token when there is a key."""
    found = {"Accept": "application/json", "User-Agent": "tierflow-client"}
    if api_key:
        found["Authorization"] = f"Bearer {api_key}"
    return found


@contextmanager
def reaching(url: str) -> Iterator[None]:
    """Turn httpx's connection failures into :class:`TierUnavailableError` naming ``url``."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TierUnavailableError(
            f"no answer in time from the tierflow entry point at {url} ({type(exc).__name__})"
        ) from exc
    except httpx.TransportError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise TierUnavailableError(f"cannot reach the tierflow entry point at {url}: {reason}") from exc


# --- the calls -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request of the API and how its answer becomes a value."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    json: JSON | None = None
    form: dict[str, str] | None = None  # a multipart form's fields (with files)
    files: dict[str, tuple[str, bytes, str]] | None = None  # name -> (file name, content, type)


class _ContextList(BaseModel):
    contexts: list[ContextInfo]


class _ModelEntry(BaseModel):
    id: str


class _ModelList(BaseModel):
    data: list[_ModelEntry]


def generate_request(**fields: Any) -> GenerateRequest:
    """The body of ``POST /generate``; an argument of the wrong type is the caller's mistake."""
    try:
        return GenerateRequest(**fields)
    except ValidationError as exc:
        raise InvalidInputError(f"generate: {_first_problem(exc)}") from exc


def generate(request: GenerateRequest) -> Call[GenerateResult]:
    return Call("POST", "/generate", lambda r: parse(GenerateResult, r), request.body())


def context(context_id: str) -> Call[ContextInfo]:
    return Call("GET", _context_path(context_id), lambda r: parse(ContextInfo, r))


def contexts() -> Call[list[ContextInfo]]:
    return Call("GET", "/contexts", lambda r: parse(_ContextList, r).contexts)


def delete_context(context_id: str) -> Call[None]:
    return Call("DELETE", _context_path(context_id), _no_content)


def migrate(context_id: str, layers: str, to: str) -> Call[MigrateResult]:
    body = {"layers": layers, "to": to}
    return Call("POST", _context_path(context_id) + "/migrate", lambda r: parse(MigrateResult, r), body)


def routing_matrix() -> Call[JSON]:
    return Call("GET", "/routing/matrix", _json_object)


def report_device(battery: JSON | None, metered: bool | None, network: str | None) -> Call[JSON]:
    fields = (("battery", battery), ("metered", metered), ("network", network))
    body = {k: v for k, v in fields if v is not None}
    return Call("PUT", "/routing/device", _json_object, body)


def image(body: JSON) -> Call[ImageResult]:
    def read(response: httpx.Response) -> ImageResult:
        data = _json_object(response)
        try:
            png = base64.b64decode(data["data"][0]["b64_json"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            where = response.request.url
            raise RecoverableError(f"unexpected answer from {where}: no image ({exc})") from exc
        return ImageResult(png=png, route=data.get("route") or {}, context_id=data.get("context_id"))

    return Call("POST", "/v1/images/generations", read, body)


def clip(body: JSON) -> Call[ClipResult]:
    def read(response: httpx.Response) -> ClipResult:
        data = _json_object(response)
        try:
            gif = base64.b64decode(data["data"][0]["b64_gif"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise RecoverableError(f"unexpected answer from {response.request.url}: no clip ({exc})") from exc
        return ClipResult(gif=gif, route=data.get("route") or {})

    return Call("POST", "/v1/clips", read, body)


def inspect(body: JSON) -> Call[InspectionResult]:
    return Call("POST", "/v1/inspections", lambda r: parse(InspectionResult, r), body)


def edit_image(
    picture: bytes, prompt: str, mask: bytes | None, fields: dict[str, str]
) -> Call[ImageResult]:
    """``POST /v1/images/edits``: the picture (and mask) as PNG files, the rest as form fields."""
    files = {"image": ("image.png", picture, "image/png")}
    if mask is not None:
        files["mask"] = ("mask.png", mask, "image/png")
    call = image({})
    return Call("POST", "/v1/images/edits", call.read, form={"prompt": prompt, **fields}, files=files)


def set_link(name: str, profile: str) -> Call[JSON]:
    path = "/deployment/links/" + quote(name, safe="")
    return Call("PUT", path, _json_object, {"profile": profile})


def dashboard_state() -> Call[JSON]:
    return Call("GET", "/dashboard/state", _json_object)


def switch_tier(tier: str, action: str) -> Call[JSON]:
    return Call("POST", f"/deployment/tiers/{quote(tier, safe='')}/{action}", _json_object)


def models() -> Call[list[str]]:
    return Call("GET", "/v1/models", lambda r: [m.id for m in parse(_ModelList, r).data])


def _context_path(context_id: str) -> str:
    if not context_id:
        raise InvalidInputError("a context id must not be empty")
    return "/contexts/" + quote(context_id, safe="")


# --- reading the answers -------------------------------------------------------------------------


def parse(model: type[M], response: httpx.Response) -> M:
    """The body of a (read) successful ``response`` as ``model``; a failed one raises its error."""
    check(response)
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise _unexpected(response.request.url, exc) from exc


def check(response: httpx.Response) -> None:
    """Raise the mapped tierflow error unless ``response`` (read) succeeded."""
    if not response.is_success:
        raise error_for_response(response)


def _no_content(response: httpx.Response) -> None:
    check(response)


def _json_object(response: httpx.Response) -> JSON:
    check(response)
    body = response.json()
    if not isinstance(body, dict):
        raise RecoverableError(
            f"unexpected answer from {response.request.url}: not a JSON object but {type(body).__name__}"
        )
    return body


def is_json(response: httpx.Response) -> bool:
    """True for a JSON answer to a stream request (a server that does not stream answers whole)."""
    content_type: str = response.headers.get("content-type", "")
    return content_type.split(";")[0].strip() == "application/json"


def stream_event(sse: SSEEvent, url: str) -> StreamEvent | None:
    """The SDK's event for one server-sent event; ``error`` raises, unknown events give None."""
    try:
        if sse.event == "token":
            return TokenEvent.model_validate_json(sse.data)
        if sse.event == "done":
            return DoneEvent(result=GenerateResult.model_validate_json(sse.data))
    except ValidationError as exc:
        raise _unexpected(url, exc) from exc
    if sse.event == "error":
        raise error_for_event(sse.data)
    return None  # an event a newer server sends that this SDK does not know


def ended_early(url: str) -> TierUnavailableError:
    """The error for a stream that ended before its ``done`` event (the connection dropped)."""
    return TierUnavailableError(f"the stream from the tierflow entry point at {url} ended before its result")


def _unexpected(url: object, exc: ValidationError) -> RecoverableError:
    return RecoverableError(f"unexpected answer from {url}: {_first_problem(exc)}")


def _first_problem(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc).splitlines()[0]
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{where}: " if where else "") + f"{first['msg']}{more}"
