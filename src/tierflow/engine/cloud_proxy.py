"""A model run by a remote tier node, with the loader's one call interface (the cloud proxy's transport)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tierflow.engine.images import OP_GENERATE_IMAGE, image_meta, reply_png
from tierflow.errors import ConfigError, TierUnavailableError, TransportError, UnsupportedModelError
from tierflow.model.package import Manifest
from tierflow.runtime.image import ImageResult
from tierflow.runtime.image_result import read_png
from tierflow.runtime.lm import GenerationResult, SamplingConfig
from tierflow.runtime.loader import default_resolution, model_kind
from tierflow.transport.dataplane import SyncDataPlaneClient
from tierflow.transport.messages import StageRequest, StageResponse
from tierflow.transport.tls import load_identity
from tierflow.types import ModelKind, Tier

ENV_CLOUD = "TIERFLOW_CLOUD"  # HOST:PORT of the cloud node's data plane
ENV_CERTS = "TIERFLOW_CERTS"  # folder made by `tierflow certs init`
ENV_IDENTITY = "TIERFLOW_IDENTITY"  # this machine's certificate name (default: device)


class CloudEndpoint(BaseModel):
    """Where the cloud node is and who we are to it."""

    model_config = ConfigDict(frozen=True)

    address: str
    certs: Path
    identity: str = Tier.DEVICE
    server_name: str = Tier.CLOUD

    @classmethod
    def from_env(cls) -> CloudEndpoint | None:
        """``TIERFLOW_CLOUD`` + ``TIERFLOW_CERTS`` (+ ``TIERFLOW_IDENTITY``), or None when unset."""
        address = os.environ.get(ENV_CLOUD)
        if not address:
            return None
        certs = os.environ.get(ENV_CERTS)
        if not certs:
            raise ConfigError(f"{ENV_CLOUD} is set but {ENV_CERTS} (the certificates folder) is not")
        return cls(address=address, certs=Path(certs), identity=os.environ.get(ENV_IDENTITY, Tier.DEVICE))


class RemoteModel:
    """One target of a package, served by a remote node: the cloud proxy's transport
    (:class:`tierflow.runtime.loader.RemoteTarget`)."""

    def __init__(self, endpoint: CloudEndpoint, manifest: Manifest, target: str = "cloud") -> None:
        spec = manifest.target(target)
        self.endpoint = endpoint
        self.kind = model_kind(manifest.model.kind)
        self.max_resolution = spec.max_resolution
        self.model_id = spec.sha256[:16]  # the node checks it serves exactly this artifact
        self._client: SyncDataPlaneClient | None = None

    def _call(self, request: StageRequest) -> StageResponse:
        if self._client is None or not self._client.connected:
            identity = load_identity(self.endpoint.certs, self.endpoint.identity)
            client = SyncDataPlaneClient(self.endpoint.address, identity, self.endpoint.server_name)
            try:
                client.connect()
            except TransportError as exc:
                client.close()
                raise TierUnavailableError(
                    f"cloud node at {self.endpoint.address} is unreachable: {exc}",
                    tier=self.endpoint.server_name,
                ) from exc
            self._client = client
        request.model = self.model_id
        try:
            response = self._client.call(request)
        except TransportError as exc:
            raise TierUnavailableError(
                f"cloud node failed during the request: {exc}", tier=self.endpoint.server_name
            ) from exc
        return response.raise_for_error(self.endpoint.server_name)

    @property
    def provider(self) -> str:
        return f"remote:{self.endpoint.server_name}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(self._call(StageRequest("run", inputs=dict(feeds))).outputs)

    def generate_text(
        self, prompt: str, config: SamplingConfig, on_text: Callable[[str], None] | None = None
    ) -> GenerationResult:
        """A whole generation on the node; ``on_text`` receives the text once, when it is back."""
        if self.kind != ModelKind.CAUSAL_LM:
            raise UnsupportedModelError(f"a {self.kind} model has no text generation")
        meta: dict[str, str | int | float | bool] = {
            "prompt": prompt,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_k": config.top_k,
            "top_p": config.top_p,
            "repeat_penalty": config.repeat_penalty,
            "repeat_last_n": config.repeat_last_n,
        }
        if config.seed is not None:
            meta["seed"] = config.seed
        if config.stop_token_ids:
            meta["stop_token_ids"] = json.dumps(list(config.stop_token_ids))
        started = time.perf_counter()
        reply = self._call(StageRequest("generate", meta=meta))
        text = str(reply.meta["text"])
        if on_text:
            on_text(text)
        return GenerationResult(
            prompt_ids=[],
            new_ids=json.loads(str(reply.meta["new_ids"])),
            text=text,
            provider=f"remote:{reply.meta.get('tier', Tier.CLOUD)}:{reply.meta.get('provider', '?')}",
            prefill_s=0.0,
            decode_s=time.perf_counter() - started,
        )

    def generate_image(
        self,
        prompt: str | None,
        resolution: int | None = None,
        refine: bool | None = None,
        seed: int | None = None,
    ) -> ImageResult:
        """A whole image on the node. ``resolution`` None: the local default; ``refine`` None: the node's
        target decides (the cloud target refines)."""
        if self.kind != ModelKind.IMAGE_GENERATOR:
            raise UnsupportedModelError(f"a {self.kind} model has no image generation")
        if resolution is None:
            resolution = default_resolution(self.max_resolution)
        reply = self._call(StageRequest(OP_GENERATE_IMAGE, meta=image_meta(prompt, resolution, refine, seed)))
        return ImageResult(
            pixels=read_png(reply_png(reply, "cloud"), "the cloud's image"),
            prompt=prompt,
            resolution=resolution,
            refined=bool(reply.meta["refined"]),
            seed=int(reply.meta["seed"]),
            provider=f"remote:{reply.meta.get('tier', Tier.CLOUD)}",
            elapsed_s=float(reply.meta["elapsed_s"]),
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
