"""A tier node's settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tierflow.errors import UnsupportedModelError
from tierflow.transport.lane import DEFAULT_POLL_S
from tierflow.types import Tier


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got '{value}'")
    return host, int(port)


def not_an_image_generator(model: str, kind: str) -> UnsupportedModelError:
    """The one-line refusal of an ``image_model`` of another kind (the node's and the deployment's)."""
    return UnsupportedModelError(f"image model {model} is a {kind} model, not an image generator")


class NodeConfig(BaseModel):
    """Everything a node process needs to start. Frozen: a running node never changes it."""

    model_config = ConfigDict(frozen=True)

    tier: Tier
    model: str = Field(description="model file (.onnx or .tfm) or bundled name")
    target: str | None = Field(None, description="target of a .tfm package; default: the tier's own")
    image_model: str | None = Field(
        None, description="a second model, an image generator for generate_image: .onnx, .tfm or bundled name"
    )
    image_target: str | None = Field(
        None, description="target of the image model's .tfm package; default: the tier's own"
    )
    detector: str | None = Field(
        None, description="a crack detector served next to the model (detect_cracks): .onnx or bundled name"
    )
    listen: str = Field("127.0.0.1:0", description="data plane HOST:PORT (mTLS gRPC)")
    http: str = Field("127.0.0.1:0", description="control plane HOST:PORT (FastAPI)")
    certs: Path = Field(description="folder made by `tierflow certs init`")
    name: str | None = Field(None, description="certificate name; default: the tier name")
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0 = auto)")
    slowdown: float = Field(
        1.0, ge=1.0, description="SIMULATED weaker hardware: every stage takes this many times as long"
    )

    peers: dict[str, str] = Field(
        default_factory=dict, description="next tiers by name -> HOST:PORT (may be a link emulator)"
    )
    memory_mib: float | None = Field(
        None, gt=0, description="SIMULATED memory budget (weights + one full context's KV) for the layer "
        "spans of a language model: a span that does not fit is never planned here"
    )
    kv_mib: float = Field(256.0, gt=0, description="KV cache this node keeps (LRU contexts evicted beyond)")
    lanes: bool = Field(
        True, description="decode steps over blocking sockets on a second port (transport/lane.py)"
    )
    lane_poll_ms: float = Field(
        DEFAULT_POLL_S * 1000,
        ge=0,
        le=1000,
        description="how long a decode lane polls for its next message: at once when its waits are "
        "that short, else from half this before the message is due (0: it always sleeps; "
        "transport/lane.py)",
    )
    # the entry point (device node) of a deployment serving a language model
    spans: str | None = Field(None, description="fixed layer spans, e.g. device=0-1,edge=2-4,cloud=5-5")
    store: str | None = Field(None, description="context store: a SQLite file or a redis:// url")
    links: dict[str, str] = Field(
        default_factory=dict, description="planning estimates of links, 'device-edge' -> profile name"
    )
    expires_in: float = Field(3600.0, gt=0, description="default lifetime of a context, seconds")
    routing: str | None = Field(
        None, description="routing config YAML: rules, energy policy, priors (docs/ROUTING.md)"
    )
    lite_model: str | None = Field(
        None, description="the phone's early-exit LM (a .tfm: its phone target), one more text offer"
    )
    deployment_url: str | None = Field(
        None, description="the local deployment's control (tierflow up): links and tiers, for the dashboard"
    )

    @field_validator("listen", "http")
    @classmethod
    def _hostport(cls, value: str) -> str:
        parse_hostport(value)
        return value

    @field_validator("peers")
    @classmethod
    def _peers(cls, value: dict[str, str]) -> dict[str, str]:
        for address in value.values():
            parse_hostport(address)
        return value

    @property
    def cert_name(self) -> str:
        return self.name or self.tier.value
