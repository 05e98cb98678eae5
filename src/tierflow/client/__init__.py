"""The SDK a user's app imports: it speaks HTTP to a deployment's entry point (never imports node/).

``Client`` / ``AsyncClient`` are the public API's calls (docs/API.md); the answers are the
pydantic models of :mod:`tierflow.client.models`; failures are tierflow's error tree.
"""

from tierflow.client.models import (
    ClipResult,
    ContextInfo,
    DoneEvent,
    GenerateRequest,
    GenerateResult,
    Hop,
    ImageResult,
    InspectionResult,
    MigrateResult,
    Move,
    Route,
    Shard,
    StreamEvent,
    TokenEvent,
)
from tierflow.client.sdk import AsyncClient, Client

__all__ = [
    "AsyncClient",
    "Client",
    "ClipResult",
    "ContextInfo",
    "DoneEvent",
    "GenerateRequest",
    "GenerateResult",
    "Hop",
    "ImageResult",
    "InspectionResult",
    "MigrateResult",
    "Move",
    "Route",
    "Shard",
    "StreamEvent",
    "TokenEvent",
]
