"""What a node computes: stages of its model, and whole generations for the cloud proxy.

Blocking ONNX Runtime work; the node's async server calls it in a thread.

An LM node mostly runs layer spans (:class:`~tierflow.engine.lm_hop.LMHop`, on the same parsed
model, :attr:`NodeExecutor.proto`): its whole-model session and stage cutter open on first use
only, so that a node holds the weights once plus its span's session, not the model several times.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import InitVar, dataclass, field, replace
from functools import cached_property

import numpy as np
import onnx
import onnxruntime as ort

from tierflow.errors import InvalidInputError, UnsupportedModelError
from tierflow.model import metadata as md
from tierflow.model.lm_contract import LMSignature
from tierflow.model.registry import resolve_model
from tierflow.runtime.image_result import ClipResult, ImageEdit, ImageResult
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.precision import for_provider
from tierflow.runtime.session import SessionOptions, active_provider, metadata, open_session
from tierflow.runtime.slowdown import SimulatedSlowdown
from tierflow.runtime.stages import StageRunner
from tierflow.runtime.text_to_image import AnyImageGenerator, PipelineGenerator, open_generator
from tierflow.types import ModelKind, Tier


@dataclass
class StageStats:
    """Per-stage timings, so planners can learn a tier's speed from what it really did."""

    calls: int = 0
    total_s: float = 0.0
    last_s: float = 0.0

    def add(self, seconds: float) -> None:
        self.calls += 1
        self.total_s += seconds
        self.last_s = seconds


@dataclass
class NodeExecutor:
    """Runs one model's stages; ``slowdown`` > 1 simulates a weaker device on the real code path."""

    model_bytes: InitVar[bytes]  # the serialized model exactly as stored (its sha256 is the model id)
    label: str
    options: SessionOptions = field(default_factory=SessionOptions)
    slowdown: float = 1.0
    stats: dict[str, StageStats] = field(default_factory=dict)

    def __post_init__(self, model_bytes: bytes) -> None:
        self.model_id = model_id(model_bytes)  # of the model as stored, whatever widening follows
        planned = self.options.provider
        # FP16 weights on a provider slower at FP16 run widened (runtime/precision.py)
        self.proto, self.widened = for_provider(onnx.load_from_string(model_bytes), planned)
        initializers = {t.name for t in self.proto.graph.initializer}
        names = [i.name for i in self.proto.graph.input if i.name not in initializers]
        self._slow = SimulatedSlowdown(self.slowdown)
        self.is_lm = LMSignature.is_causal_lm(names)  # it then serves layer spans too
        self._image: AnyImageGenerator | None = None
        if self.is_lm:  # the session the spans will use picks the same provider
            self.provider = planned
            return
        session = self._session  # validates the model with a clear error
        self.provider = active_provider(session)
        if md.kind(metadata(session)) == ModelKind.IMAGE_GENERATOR:
            self._image = open_generator(session, self.stages.cutter.model)

    @cached_property
    def _session(self) -> ort.InferenceSession:
        return open_session(self.proto.SerializeToString(), self.options)

    @cached_property
    def stages(self) -> StageRunner:
        return StageRunner(self.proto, self.options, slowdown=self.slowdown)

    @property
    def image(self) -> AnyImageGenerator | None:
        """The image generator this model is driven as; None when it is not one."""
        return self._image

    @property
    def has_refiner(self) -> bool:
        return self._image is not None and self._image.has_refiner

    @cached_property
    def max_resolution(self) -> int | None:
        """The side cap a compiled target records (phone 256, edge 1024, ...); None: no cap of its own."""
        return md.max_resolution(self.proto)

    @cached_property
    def lm(self) -> CausalLM | None:
        """The whole model as one generator (a node's own ``/v1/generate``); None if not an LM."""
        return CausalLM(self._session) if self.is_lm else None

    def run_stage(self, tensors: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Compute ``outputs`` (all graph outputs when empty) from ``tensors``."""
        outputs = outputs or self.stages.cutter.graph_outputs
        started = time.perf_counter()
        result = self.stages.run(tensors, outputs)  # applies the simulated slowdown itself
        key = ",".join(outputs)
        self.stats.setdefault(key, StageStats()).add(time.perf_counter() - started)
        return result

    @property
    def can_edit(self) -> bool:
        return isinstance(self._image, PipelineGenerator)

    def generate_image(
        self, prompt: str | None, resolution: int, refine: bool | None, seed: int | None,
        edit: ImageEdit | None = None,
    ) -> ImageResult:
        """``refine`` None: refine when the model has a refiner stage (as a local target does);
        ``edit``: repaint that picture instead of painting from noise."""
        if self._image is None:
            raise UnsupportedModelError("this node's model is not an image generator")
        if edit is not None and not isinstance(self._image, PipelineGenerator):
            raise UnsupportedModelError("this node's image model cannot edit pictures (it takes no image)")
        cap = self.max_resolution
        if cap is not None and resolution > cap:
            target = md.target(self.proto) or self.label
            raise InvalidInputError(f"target {target} makes images up to {cap} px; asked for {resolution}")
        if refine is None:
            refine = self._image.has_refiner
        started = time.perf_counter()
        if edit is not None:
            assert isinstance(self._image, PipelineGenerator)
            result = self._image.edit(
                prompt, edit.image, edit.mask, edit.strength, resolution, refine=refine, seed=seed
            )
        else:
            result = self._image.generate(prompt, resolution, refine=refine, seed=seed)
        real = time.perf_counter() - started
        seconds = self._slow.stretch(("generate_image", resolution, refine), started)
        self.stats.setdefault("generate_image", StageStats()).add(seconds)
        if seconds > real and self.slowdown > 1.0:  # the SIMULATED hardware's compute time, as measured
            result = replace(result, elapsed_s=result.elapsed_s + seconds - real)
        return result

    def generate_clip(
        self, prompt: str | None, frames: int, resolution: int, seed: int | None, fps: float
    ) -> ClipResult:
        """A clip (:meth:`PipelineGenerator.clip`) at up to this target's cap."""
        if not isinstance(self._image, PipelineGenerator):
            raise UnsupportedModelError("this node's image model makes no clips (no text-to-image pipeline)")
        cap = self.max_resolution
        if cap is not None and resolution > cap:
            target = md.target(self.proto) or self.label
            raise InvalidInputError(f"target {target} makes clips up to {cap} px; asked for {resolution}")
        started = time.perf_counter()
        result = self._image.clip(prompt, frames, resolution, seed=seed, fps=fps)
        real = time.perf_counter() - started
        seconds = self._slow.stretch(("generate_clip", frames, resolution), started)
        self.stats.setdefault("generate_clip", StageStats()).add(seconds)
        if seconds > real and self.slowdown > 1.0:  # the SIMULATED hardware's compute time, as measured
            result = replace(result, elapsed_s=result.elapsed_s + seconds - real)
        return result

    def generate(self, prompt: str, config: SamplingConfig) -> dict[str, object]:
        if self.lm is None:
            raise UnsupportedModelError("this node's model is not a language model")
        started = time.perf_counter()
        result = self.lm.generate(prompt, config)
        seconds = self._slow.stretch(("generate", len(prompt), config.max_new_tokens), started)
        self.stats.setdefault("generate", StageStats()).add(seconds)
        return {
            "text": result.text or "",
            "new_ids": result.new_ids,
            "provider": result.provider,
            "tokens_per_s": result.tokens_per_s,
        }


# the package target a tier serves by default
TIER_TARGETS: dict[str, str] = {Tier.DEVICE: "phone", Tier.EDGE: "edge", Tier.CLOUD: "cloud"}


def model_id(model_bytes: bytes) -> str:
    """How tiers name a model: the first 16 hex digits of its sha256 (as in a .tfm manifest)."""
    return hashlib.sha256(model_bytes).hexdigest()[:16]


def load_node_model(model: str, tier: str, target: str | None = None) -> tuple[bytes, str]:
    """A node's model bytes: an ONNX file, a bundled name, or one target of a .tfm package."""
    if model.endswith(".tfm"):
        from tierflow.model.package import Package

        name = target or TIER_TARGETS[tier]
        return Package.open(model).artifact(name), f"{model}#{name}"
    path = resolve_model(model)
    return path.read_bytes(), str(path)
