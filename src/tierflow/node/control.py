"""A node's control plane: health, readiness, metrics, node info, generation (FastAPI)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field

from tierflow.errors import RecoverableError, UserError
from tierflow.node.config import NodeConfig
from tierflow.node.executor import NodeExecutor
from tierflow.runtime.lm import SamplingConfig


@dataclass
class NodeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "tierflow_node_requests",
            "Requests handled by this node",
            ["op", "status"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "tierflow_stage_seconds",
            "Time to compute a stage on this node",
            ["op"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


@dataclass
class NodeState:
    """What the control plane reports on; the node server fills in the addresses once bound."""

    config: NodeConfig
    executor: NodeExecutor
    metrics: NodeMetrics
    extra_registries: list[CollectorRegistry] = field(default_factory=list)
    data_plane_address: str | None = None
    ready: bool = False


class GenerateRequest(BaseModel):
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(48, ge=0, le=4096)
    temperature: float = Field(0.0, ge=0.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None


class GenerateResponse(BaseModel):
    text: str
    new_tokens: int
    tier: str
    provider: str
    tokens_per_s: float


def create_app(state: NodeState) -> FastAPI:
    app = FastAPI(title=f"tierflow {state.config.tier.value} node", version="0.1.0")

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Any, exc: RequestValidationError) -> Response:
        # Rendered with ASCII escapes and without echoing the input: a request that is not
        # valid text (a lone surrogate) must get its 422, not crash the encoder.
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        body = json.dumps({"error": "InvalidRequest", "detail": errors}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(UserError)
    async def _user_error(_: Any, exc: UserError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": type(exc).__name__, "detail": str(exc)})

    @app.exception_handler(RecoverableError)
    async def _recoverable(_: Any, exc: RecoverableError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"error": type(exc).__name__, "detail": str(exc)})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        """Readiness: the model is loaded and the data plane listens."""
        if not state.ready:
            raise HTTPException(status_code=503, detail="not ready")
        return {"status": "ready", "data_plane": state.data_plane_address or ""}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        body = b"".join(generate_latest(r) for r in [state.metrics.registry, *state.extra_registries])
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/node")
    async def node_info() -> dict[str, Any]:
        ex = state.executor
        return {
            "tier": state.config.tier.value,
            "name": state.config.cert_name,
            "model": ex.label,
            "model_id": ex.model_id,
            "provider": ex.provider,
            "data_plane": state.data_plane_address,
            "simulated_slowdown": ex.slowdown,
            "stages": {k: vars(v) for k, v in ex.stats.items()},
        }

    @app.post("/v1/generate", response_model=GenerateResponse)
    async def generate(req: GenerateRequest) -> GenerateResponse:
        config = SamplingConfig(
            max_new_tokens=req.max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            seed=req.seed,
        )
        with state.metrics.stage_seconds.labels("generate").time():
            out = await asyncio.to_thread(state.executor.generate, req.prompt, config)
        state.metrics.requests.labels("generate", "ok").inc()
        return GenerateResponse(
            text=str(out["text"]),
            new_tokens=len(out["new_ids"]),  # type: ignore[arg-type]
            tier=state.config.tier.value,
            provider=str(out["provider"]),
            tokens_per_s=float(out["tokens_per_s"]),  # type: ignore[arg-type]
        )

    return app
