"""The bodies of the public HTTP API (docs/API.md) as pydantic models.

Every response model keeps fields it does not know (``extra="allow"``) and gives the
observational ones defaults, so a newer server -- one that adds fields -- does not break an
older SDK. Tiers are plain strings: a deployment may name tiers of its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

JSON = dict[str, Any]


class _Body(BaseModel):
    """Lenient: unknown fields are kept (``model_extra``), ``from`` is filled by its alias or name."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class GenerateRequest(BaseModel):
    """The body of ``POST /generate``; a None option is left out, so the server's default holds."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    context_id: str | None = None
    max_tokens: int = 64
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    stream: bool = False
    expires_in: int | float | None = None
    sla: JSON | None = None  # max_latency, min_quality / min_resolution, offline_ok, prefer
    battery: JSON | None = None  # {"level": 0..100, "charging": bool}
    metered: bool | None = None
    network: str | None = None  # the device's access network: wifi, 4g, 3g, offline, ...
    tier: str | None = None  # pin the request to this tier's offer

    def body(self) -> JSON:
        """The JSON body to send: every field that is not None."""
        return self.model_dump(mode="json", exclude_none=True)


class Hop(_Body):
    """One crossing between tiers on a request's way and how long it took."""

    from_: str = Field(alias="from")
    to: str
    seconds: float = 0.0


class Route(_Body):
    """Which tier ran which layers of a request, and what it cost."""

    tiers: list[str] = Field(default_factory=list)
    spans: dict[str, str] = Field(default_factory=dict)  # tier -> "first-last" layer span
    hops: list[Hop] = Field(default_factory=list)
    compute_s: dict[str, float] = Field(default_factory=dict)
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    events: list[JSON] = Field(default_factory=list)  # failover, KV rebuild, migration, ...
    decision: JSON | None = None  # the router's choice, its alternatives and why (routed requests)


class GenerateResult(_Body):
    """The answer of ``POST /generate`` (and the ``done`` event of a stream)."""

    text: str
    context_id: str
    expires_in: float = 0.0
    tokens: int = 0
    route: Route = Field(default_factory=Route)


class ImageResult(_Body):
    """The answer of ``POST /v1/images/generations``: the PNG and where it was made."""

    png: bytes
    route: JSON = Field(default_factory=dict)  # tier, resolution, refined, seed, timings, the decision
    context_id: str | None = None  # with a follow-up prompt (Client.image), changes this picture

    @property
    def tier(self) -> str:
        return str(self.route.get("tier", ""))

    @property
    def resolution(self) -> int:
        return int(self.route.get("resolution", 0))


class ClipResult(_Body):
    """The answer of ``POST /v1/clips``: the animated GIF and where, how large and how long it was made."""

    gif: bytes
    route: JSON = Field(default_factory=dict)  # tier, resolution, frames, seed, timings, the decision

    @property
    def tier(self) -> str:
        return str(self.route.get("tier", ""))

    @property
    def resolution(self) -> int:
        return int(self.route.get("resolution", 0))

    @property
    def frames(self) -> int:
        return int(self.route.get("frames", 0))


class InspectionResult(_Body):
    """The answer of ``POST /v1/inspections``: is there a crack, where, and which tier's detector said so."""

    cracked: bool
    score: float  # the probability of a crack in the frame
    confidence: float  # how sure the answer that stands is (0.5..1)
    box: list[float] | None = None  # normalised x0, y0, x1, y1 of the crack
    tier: str  # whose answer stands
    escalated: bool  # the frame went to the cloud's detector as a hard example
    route: JSON = Field(default_factory=dict)  # the first answer, the final one, why, the tiers that failed


class TokenEvent(_Body):
    """One generated piece of text as it streams (``event: token``)."""

    text: str
    token: int | None = None


class DoneEvent(BaseModel):
    """The end of a stream (``event: done``): the whole result."""

    result: GenerateResult


StreamEvent = TokenEvent | DoneEvent


class Shard(_Body):
    """The KV shard one tier holds for a context."""

    layers: str
    tokens: int = 0
    bytes: int = 0


class ContextInfo(_Body):
    """A conversation: its id, lifetime and (from ``GET /contexts/{id}``) where its KV lives."""

    context_id: str
    expires_in: float = 0.0
    tokens: int = 0
    spans: dict[str, str] = Field(default_factory=dict)
    shards: dict[str, Shard] = Field(default_factory=dict)


class Move(_Body):
    """What a migration moved: which layers, from which tier to which, how many bytes, how fast."""

    layers: str
    from_: str = Field(alias="from")
    to: str
    bytes: int = 0
    seconds: float = 0.0


class MigrateResult(_Body):
    """The answer of ``POST /contexts/{id}/migrate``: the context's new spans and the move."""

    context_id: str
    spans: dict[str, str] = Field(default_factory=dict)
    moved: Move

