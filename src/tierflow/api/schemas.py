"""The bodies of the public API (docs/API.md), as pydantic models: the OpenAPI document comes from these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tierflow.router.energy import BatteryState
from tierflow.router.sla import SLA
from tierflow.runtime.lm import SamplingConfig
from tierflow.types.tiers import Tier

DEFAULTS = SamplingConfig()
MAX_TOKENS = 4096


class Sampling(BaseModel):
    """How to pick tokens; the defaults are llama.cpp's (temperature 0 is greedy)."""

    max_tokens: int = Field(64, ge=1, le=MAX_TOKENS)
    temperature: float = Field(DEFAULTS.temperature, ge=0.0, le=10.0)
    top_k: int = Field(DEFAULTS.top_k, ge=0)
    top_p: float = Field(DEFAULTS.top_p, gt=0.0, le=1.0)
    repeat_penalty: float = Field(DEFAULTS.repeat_penalty, gt=0.0, le=10.0, description="1: off")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)

    def config(self) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repeat_penalty=self.repeat_penalty,
            seed=self.seed,
        )


SLA_DESCRIPTION = (
    "service level: max_latency (s), min_quality (text: early_exit, full) or min_resolution (images), "
    "offline_ok, prefer (latency, quality, energy); docs/ROUTING.md"
)


class Routed(BaseModel):
    """What the router reads from a request besides its work (docs/ROUTING.md)."""

    sla: dict[str, Any] | None = Field(None, description=SLA_DESCRIPTION)
    battery: dict[str, Any] | None = Field(
        None, description='the device battery, {"level": 0..100, "charging": bool}; kept for later requests'
    )
    metered: bool | None = Field(None, description="the device's network is metered; kept for later requests")
    network: str | None = Field(
        None, max_length=40, description="the device's access network (wifi, 4g, 3g, offline...); kept"
    )
    tier: Tier | None = Field(None, description="pin the request to this tier's offer (still reported)")

    def routing(self) -> tuple[SLA | None, BatteryState | None]:
        """The parsed SLA and battery report (InvalidInputError naming the field on bad values)."""
        sla = SLA.parse(self.sla) if self.sla is not None else None
        battery = BatteryState.parse(self.battery) if self.battery is not None else None
        return sla, battery


class GenerateBody(Sampling, Routed):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=200_000)
    context_id: str | None = Field(None, max_length=200, description="continue this conversation")
    stream: bool = False
    expires_in: float | None = Field(None, gt=0, le=30 * 86400, description="seconds; default 3600")


class Hop(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    seconds: float


class Route(BaseModel):
    """Where the work ran and how long each part took."""

    tiers: list[str]
    spans: dict[str, str]
    hops: list[Hop]
    compute_s: dict[str, float]
    ttft_s: float
    tokens_per_s: float
    prompt_tokens: int
    cached_tokens: int
    events: list[dict[str, str]]
    decision: dict[str, Any] | None = Field(
        None, description="the router's choice, its alternatives and why (when the request was routed)"
    )


class GenerateReply(BaseModel):
    text: str
    context_id: str
    expires_in: float
    tokens: int
    route: Route


class ContextSummary(BaseModel):
    context_id: str
    expires_in: float
    tokens: int


class ContextList(BaseModel):
    contexts: list[ContextSummary]


class Shard(BaseModel):
    layers: str
    tokens: int
    bytes: int


class ContextDetail(ContextSummary):
    spans: dict[str, str]
    shards: dict[str, Shard]


class MigrateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layers: str = Field(max_length=40, examples=["0-1"])
    to: Literal["device", "edge", "cloud"]


class MigrateReply(BaseModel):
    context_id: str
    spans: dict[str, str]
    moved: dict[str, Any]


# --- OpenAI-compatible -----------------------------------------------------------------------------


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str = Field(max_length=200_000)


class OpenAISampling(Routed):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (n=1, ...)

    model: str = Field(max_length=200)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stream: bool = False
    context_id: str | None = Field(None, max_length=200, description="tierflow: continue this context")

    def config(self) -> SamplingConfig:
        tokens = self.max_completion_tokens or self.max_tokens or 64
        # OpenAI's frequency_penalty (additive, 0 = off) has no exact counterpart in the multiplicative
        # repetition penalty; a positive value turns the default penalty on, 0 or less turns it off
        penalty = (
            DEFAULTS.repeat_penalty if self.frequency_penalty is None or self.frequency_penalty > 0 else 1.0
        )
        return SamplingConfig(
            max_new_tokens=tokens,
            temperature=DEFAULTS.temperature if self.temperature is None else self.temperature,
            top_p=DEFAULTS.top_p if self.top_p is None else self.top_p,
            repeat_penalty=penalty,
            seed=self.seed,
        )


class ChatBody(OpenAISampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)


class CompletionBody(OpenAISampling):
    prompt: str = Field(min_length=1, max_length=200_000)


class DeviceReport(BaseModel):
    """``PUT /routing/device``: the device's conditions for the requests that follow."""

    model_config = ConfigDict(extra="forbid")

    battery: dict[str, Any] | None = Field(None, description='{"level": 0..100, "charging": bool}')
    metered: bool | None = None
    network: str | None = Field(None, max_length=40, description="wifi, 4g, 3g, offline, ...")
