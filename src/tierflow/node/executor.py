"""What a node computes: stages of its model, and whole generations for the cloud proxy.

Blocking ONNX Runtime work; the node's async server calls it in a thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from tierflow.errors import InvalidInputError, InvalidModelError, UnsupportedModelError
from tierflow.model.lm_contract import LMSignature
from tierflow.model.registry import resolve_model
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.session import SessionOptions, active_provider, open_session
from tierflow.runtime.stages import StageRunner, simulate_slowdown


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

    model: onnx.ModelProto
    label: str
    options: SessionOptions = field(default_factory=SessionOptions)
    slowdown: float = 1.0
    stats: dict[str, StageStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stages = StageRunner(self.model, self.options, slowdown=self.slowdown)
        self.model_id = self.stages.model_hash[:16]
        session = open_session(self.model.SerializeToString(), self.options)
        self.provider = active_provider(session)
        names = [i.name for i in session.get_inputs()]
        self._lm = CausalLM(session) if LMSignature.is_causal_lm(names) else None

    def run_stage(self, tensors: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        if not outputs:
            raise InvalidInputError("a stage request must name at least one output")
        started = time.perf_counter()
        result = self.stages.run(tensors, outputs)  # applies the simulated slowdown itself
        key = ",".join(outputs)
        self.stats.setdefault(key, StageStats()).add(time.perf_counter() - started)
        return result

    def generate(self, prompt: str, config: SamplingConfig) -> dict[str, object]:
        if self._lm is None:
            raise UnsupportedModelError("this node's model is not a language model")
        started = time.perf_counter()
        result = self._lm.generate(prompt, config)
        self.stats.setdefault("generate", StageStats()).add(simulate_slowdown(started, self.slowdown))
        return {
            "text": result.text or "",
            "new_ids": result.new_ids,
            "provider": result.provider,
            "tokens_per_s": result.tokens_per_s,
        }


TIER_TARGETS = {"device": "phone", "edge": "edge", "cloud": "cloud"}


def load_node_model(model: str, tier: str, target: str | None = None) -> tuple[onnx.ModelProto, str]:
    """A node's model: an ONNX file, a bundled name, or one target of a .tfm package."""
    if model.endswith(".tfm"):
        from tierflow.model.package import Package

        name = target or TIER_TARGETS[tier]
        return onnx.load_from_string(Package.open(model).artifact(name)), f"{model}#{name}"
    path = resolve_model(model)
    try:
        return onnx.load(str(path)), str(path)
    except Exception as exc:
        raise InvalidModelError(
            f"{path} is not a valid ONNX model: {' '.join(str(exc).split())[:200]}"
        ) from exc
