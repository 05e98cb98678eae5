"""How the public API answers a tierflow error: one status per kind, one JSON body for all.

The body is ``{"error": "<Name>", "detail": "<one line>"}`` (docs/API.md). The handlers are
installed on the app, so a route raises the library's typed error and never builds a reply.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tierflow.errors import (
    AuthenticationError,
    ContextExpiredError,
    ContextForbiddenError,
    ContextNotFoundError,
    InvalidInputError,
    ModelNotFoundError,
    PlanError,
    TierUnavailableError,
    TokenizerError,
    UnsupportedModelError,
)
from tierflow.router.sla import SLAUnmetError


class APIError(BaseModel):
    """Every error of the public API (but a body that does not match its schema)."""

    error: str = Field(examples=["ContextNotFound"])
    detail: str


# (error class, HTTP status, the name the body gives); the first match in this order wins
MAPPING: tuple[tuple[type[Exception], int, str], ...] = (
    (AuthenticationError, 401, "Unauthorized"),
    (ContextForbiddenError, 403, "Forbidden"),
    (ContextNotFoundError, 404, "ContextNotFound"),
    (ContextExpiredError, 410, "ContextExpired"),
    (ModelNotFoundError, 422, "UnknownModel"),
    (UnsupportedModelError, 422, "Unsupported"),
    (InvalidInputError, 422, "InvalidRequest"),
    (SLAUnmetError, 422, "SLAUnmet"),
    (TokenizerError, 422, "InvalidRequest"),
    (PlanError, 503, "TierUnavailable"),
    (TierUnavailableError, 503, "TierUnavailable"),
)

_DESCRIPTIONS = {
    401: "No API key, or one the deployment does not know",
    403: "The context belongs to another identity",
    404: "No context has this id",
    410: "The context has expired; it and its KV are gone",
    422: "The request cannot be used (the detail says why; SLAUnmet names the best offer)",
    503: "A tier is gone and no tier left can take its work; retry later",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a route that can answer these error statuses."""
    return {s: {"model": APIError, "description": _DESCRIPTIONS[s]} for s in statuses}


def error_body(exc: Exception) -> tuple[int, dict[str, str]]:
    """The status and body an error stands for (an unexpected one is a 500 naming only its type)."""
    for cls, status, name in MAPPING:
        if isinstance(exc, cls):
            return status, APIError(error=name, detail=" ".join(str(exc).split())).model_dump()
    return 500, APIError(error="Internal", detail=type(exc).__name__).model_dump()


def install(app: FastAPI) -> None:
    """Register the handlers on ``app`` (more specific classes first, as Starlette looks them up by MRO)."""
    for cls, _status, _name in MAPPING:

        async def handler(_: Any, exc: Exception) -> JSONResponse:
            status, body = error_body(exc)
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse(status_code=status, content=body, headers=headers)

        app.add_exception_handler(cls, handler)
