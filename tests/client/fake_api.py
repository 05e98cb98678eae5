"""An in-process fake of the public API (docs/API.md) for the SDK's and the CLI's tests.

It answers exactly the documented shapes through ``httpx.MockTransport`` (sync and async), records
every request, streams ``/generate`` as server-sent events in small chunks cut at awkward places
(inside UTF-8 characters, between ``\\r`` and ``\\n``), and can answer any documented error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

KEY = "tf_test_key"
TOKENS = [(" is", 318), (" used", 973), (" café", 4401), (" a\u2028b", 77), ("\n", 198)]
ERROR_NAMES = {401: "Unauthorized", 403: "Forbidden", 404: "ContextNotFound", 410: "ContextExpired",
               422: "InvalidRequest", 503: "TierUnavailable", 400: "BadRequest", 500: "Internal"}


def route() -> dict[str, Any]:
    return {
        "tiers": ["device", "edge", "cloud"],
        "spans": {"device": "0-1", "edge": "2-4", "cloud": "5-5"},
        "hops": [{"from": "device", "to": "edge", "seconds": 0.012},
                 {"from": "edge", "to": "cloud", "seconds": 0.02}],
        "compute_s": {"device": 0.10, "edge": 0.21, "cloud": 0.07},
        "ttft_s": 0.05, "tokens_per_s": 41.2, "prompt_tokens": 5, "cached_tokens": 0,
        "events": [{"event": "failover", "lost": "cloud", "spans": {"device": "0-1", "edge": "2-5"}}],
        "a_newer_field": {"kept": True},
    }


def result(context_id: str = "ctx_abc123") -> dict[str, Any]:
    return {"text": "".join(t for t, _ in TOKENS), "context_id": context_id, "expires_in": 3600,
            "tokens": len(TOKENS), "route": route(), "model": "demo-lm"}


def sse(event: str, data: dict[str, Any], eol: str = "\n") -> str:
    return f"event: {event}{eol}data: {json.dumps(data, ensure_ascii=False)}{eol}{eol}"


def chunked(body: bytes, sizes: tuple[int, ...] = (1, 7, 3, 11, 2, 5)) -> list[bytes]:
    """``body`` in pieces of cycling sizes: cut inside characters, fields and line endings."""
    pieces, at, i = [], 0, 0
    while at < len(body):
        size = sizes[i % len(sizes)]
        pieces.append(body[at : at + size])
        at, i = at + size, i + 1
    return pieces


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that arrives in the given pieces, for the sync and the async client."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


@dataclass
class Seen:
    method: str
    path: str
    raw_path: bytes
    headers: httpx.Headers
    body: Any


@dataclass
class FakeAPI:
    """The entry point's API; ``error`` makes every authenticated call answer it."""

    error: tuple[int, str] | None = None  # (status, detail)
    stream_error: tuple[str, str] | None = None  # (error name, detail) after the first token
    stream_eol: str = "\n"
    seen: list[Seen] = field(default_factory=list)
    made: list[tuple[str | None, str | None]] = field(default_factory=list)  # clients the CLI made

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.seen.append(Seen(request.method, request.url.path, request.url.raw_path, request.headers, body))
        path = request.url.path
        if path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return self._error(401, "no API key, or one this deployment does not know")
        if self.error is not None:
            return self._error(*self.error)
        return self._route(request.method, path, body)

    def _route(self, method: str, path: str, body: Any) -> httpx.Response:
        if (method, path) == ("POST", "/generate"):
            if body.get("context_id") == "ctx_gone":
                return self._error(410, "context ctx_gone has expired")
            if body.get("stream"):
                return self._stream(body)
            return httpx.Response(200, json=result(body.get("context_id") or "ctx_abc123"))
        if (method, path) == ("GET", "/contexts"):
            return httpx.Response(200, json={"contexts": [
                {"context_id": "ctx_abc123", "expires_in": 3599, "tokens": 10},
                {"context_id": "ctx_def456", "expires_in": 12, "tokens": 3}]})
        if (method, path) == ("GET", "/contexts/ctx_abc123"):
            return httpx.Response(200, json={
                "context_id": "ctx_abc123", "expires_in": 3599, "tokens": 10,
                "spans": {"device": "0-1", "edge": "2-5"},
                "shards": {"device": {"layers": "0-1", "tokens": 10, "bytes": 40960},
                           "edge": {"layers": "2-5", "tokens": 10, "bytes": 81920}}})
        if (method, path) == ("DELETE", "/contexts/ctx_abc123"):
            return httpx.Response(204)
        if (method, path) == ("POST", "/contexts/ctx_abc123/migrate"):
            return httpx.Response(200, json={
                "context_id": "ctx_abc123", "spans": {"edge": "0-5"},
                "moved": {"layers": body["layers"], "from": "device", "to": body["to"], "bytes": 40960,
                          "seconds": 0.031}})
        if (method, path) == ("GET", "/v1/models"):
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": "demo-lm", "object": "model", "owned_by": "tierflow"}]})
        if path.startswith("/contexts/"):
            return self._error(404, f"no context has the id {path.rsplit('/', 1)[-1]}")
        return self._error(404, "Not Found")

    def _stream(self, body: dict[str, Any]) -> httpx.Response:
        eol = self.stream_eol
        text = f": keep-alive{eol}retry: 1000{eol}"
        for i, (piece, token) in enumerate(TOKENS):
            text += sse("token", {"text": piece, "token": token}, eol)
            if i == 0 and self.stream_error is not None:
                name, detail = self.stream_error
                text += sse("error", {"error": name, "detail": detail}, eol)
                break
            if i == 1:
                text += f"event: progress{eol}data: {{}}{eol}{eol}"  # an event the SDK does not know
        else:
            text += sse("done", result(body.get("context_id") or "ctx_abc123"), eol)
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=Chunks(chunked(text.encode())))

    @staticmethod
    def _error(status: int, detail: str) -> httpx.Response:
        return httpx.Response(status, json={"error": ERROR_NAMES.get(status, "Error"), "detail": detail})
