"""Bearer API keys on the HTTP side: who is calling (keys and identities: :mod:`tierflow.context.auth`)."""

from __future__ import annotations

from fastapi import Request
from fastapi.security import HTTPBearer

from tierflow.context.auth import authenticate
from tierflow.context.store import ContextStore

_bearer = HTTPBearer(auto_error=False, description="an API key from `tierflow up` or `tierflow token`")


async def caller(request: Request) -> str:
    """FastAPI dependency: the identity behind the request's bearer key (401 otherwise)."""
    credentials = await _bearer(request)
    store: ContextStore = request.app.state.tierflow.store
    key = (
        credentials.credentials
        if credentials is not None and credentials.scheme.lower() == "bearer"
        else None
    )
    return authenticate(store, key)
