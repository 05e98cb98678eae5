"""A node's control plane: health, readiness, metrics, node info, generation (FastAPI)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, BeforeValidator, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tierflow.engine.images import ImageCapability
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
    image_executor: NodeExecutor | None = None  # the node's second model, an image generator
    data_plane_address: str | None = None
    ready: bool = False


DEFAULT_SAMPLING = SamplingConfig()  # the request's defaults: the default decoding of the Python API


def _json_number(value: object) -> object:
    """A number as JSON Schema has it: ``2.0`` is the integer 2; ``false`` and ``"2"`` are no numbers."""
    if isinstance(value, bool | str | bytes):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    return value


Integer = Annotated[int, BeforeValidator(_json_number)]
Number = Annotated[float, BeforeValidator(_json_number)]


class GenerateRequest(BaseModel):
    prompt: str = Field(min_length=1)
    max_tokens: Integer = Field(48, ge=0, le=4096)
    temperature: Number = Field(DEFAULT_SAMPLING.temperature, ge=0.0, description="0: the most likely token")
    top_k: Integer = Field(DEFAULT_SAMPLING.top_k, ge=0, description="0: all tokens")
    top_p: Number = Field(DEFAULT_SAMPLING.top_p, gt=0.0, le=1.0)
    repeat_penalty: Number = Field(DEFAULT_SAMPLING.repeat_penalty, gt=0.0, description="1: off")
    repeat_last_n: Integer = Field(DEFAULT_SAMPLING.repeat_last_n, ge=0, description="0: off")
    seed: Annotated[int, Field(ge=0), BeforeValidator(_json_number)] | None = None


class GenerateResponse(BaseModel):
    text: str
    new_tokens: int
    tier: str
    provider: str
    tokens_per_s: float


class ErrorResponse(BaseModel):
    """Every error but a malformed request: the error's class and one line saying what went wrong."""

    error: str = Field(examples=["InvalidInputError"])
    detail: str


class FieldProblem(BaseModel):
    """One thing wrong with a request: where (``["body", "prompt"]``) and what."""

    loc: list[str | int]
    msg: str


class InvalidRequestResponse(BaseModel):
    """A request that does not match its schema (422); the input is never echoed back."""

    error: Literal["InvalidRequest"] = "InvalidRequest"
    detail: list[FieldProblem]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The input cannot be used (a user mistake)"},
    503: {"model": ErrorResponse, "description": "The environment failed; retry later or elsewhere"},
}
INVALID_REQUEST: dict[int | str, dict[str, Any]] = {
    422: {"model": InvalidRequestResponse, "description": "The request does not match its schema"},
}


def _image_info(images: NodeExecutor) -> dict[str, Any] | None:
    """What answers ``generate_image`` on this node (None: nothing does), as the data plane's info has it."""
    if images.image is None:
        return None
    capability = ImageCapability.of(images)
    return {"model": images.label, **asdict(capability)}


def create_app(state: NodeState) -> FastAPI:
    app = FastAPI(title=f"tierflow {state.config.tier.value} node", version="0.1.0")

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Any, exc: RequestValidationError) -> Response:
        # Rendered with ASCII escapes and without echoing the input: a request that is not
        # valid text (a lone surrogate) must get its 422, not crash the encoder.
        # The body is InvalidRequestResponse, as the OpenAPI document declares for every 422.
        problems = [
            FieldProblem(loc=list(e.get("loc", ())), msg=str(e.get("msg", ""))) for e in exc.errors()
        ]
        body = json.dumps(InvalidRequestResponse(detail=problems).model_dump(), ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    def _error(status: int, error: str, detail: str) -> JSONResponse:
        body = ErrorResponse(error=error, detail=detail).model_dump()
        return JSONResponse(status_code=status, content=body)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Any, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own errors (a body that is not text, an unknown path or method) in the same shape
        name = HTTPStatus(exc.status_code).phrase.replace(" ", "")
        response = _error(exc.status_code, name, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(UserError)
    async def _user_error(_: Any, exc: UserError) -> JSONResponse:
        return _error(400, type(exc).__name__, str(exc))

    @app.exception_handler(RecoverableError)
    async def _recoverable(_: Any, exc: RecoverableError) -> JSONResponse:
        return _error(503, type(exc).__name__, str(exc))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        responses={503: {"model": ErrorResponse, "description": "Not ready yet (still loading or binding)"}},
    )
    async def readyz() -> Any:
        """Readiness: the model is loaded and the data plane listens."""
        if not state.ready:
            return _error(503, "NotReady", "not ready")
        return {"status": "ready", "data_plane": state.data_plane_address or ""}

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                         "description": "Prometheus text exposition format"}},
    )
    async def metrics() -> PlainTextResponse:
        """Prometheus metrics of this node (text exposition format)."""
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
            "image": _image_info(state.image_executor or ex),
        }

    @app.post(
        "/v1/generate", response_model=GenerateResponse, responses={**ERROR_RESPONSES, **INVALID_REQUEST}
    )
    async def generate(req: GenerateRequest) -> GenerateResponse:
        """Generate a continuation of ``prompt`` with this node's language model."""
        config = SamplingConfig(
            max_new_tokens=req.max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            repeat_penalty=req.repeat_penalty,
            repeat_last_n=req.repeat_last_n,
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
