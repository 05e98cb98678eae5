"""Running stages (sub-graphs) of a model on ONNX Runtime, one session per distinct stage."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tierflow.errors import InvalidInputError
from tierflow.model.partition import GraphCutter
from tierflow.runtime.session import SessionOptions, open_session
from tierflow.runtime.slowdown import SimulatedSlowdown


class StageRunner:
    """Runs any stage of one model; extracted stages and their sessions are cached.

    ``slowdown`` > 1 simulates a weaker device (see :mod:`tierflow.runtime.slowdown`).
    """

    def __init__(
        self,
        model: onnx.ModelProto | str | Path,
        options: SessionOptions | None = None,
        slowdown: float = 1.0,
    ) -> None:
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        self.model_hash = hashlib.sha256(proto.SerializeToString()).hexdigest()
        self.cutter = GraphCutter(proto)
        self.options = options or SessionOptions()
        self.slowdown = slowdown
        self._slow = SimulatedSlowdown(slowdown)
        self._sessions: dict[tuple[tuple[str, ...], tuple[str, ...]], ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def session_for(self, inputs: list[str], outputs: list[str]) -> tuple[ort.InferenceSession, list[str]]:
        needed = self.cutter.needed_inputs(outputs, inputs)
        key = (tuple(needed), tuple(outputs))
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                stage = self.cutter.extract(needed, outputs)
                session = open_session(stage.SerializeToString(), self.options)
                self._sessions[key] = session
        return session, needed

    def run(self, tensors: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Compute ``outputs`` from ``tensors`` (extra tensors are ignored)."""
        session, needed = self.session_for(list(tensors), outputs)
        feeds = {name: tensors[name] for name in needed}
        started = time.perf_counter()
        try:
            values = session.run(outputs, feeds)
        except Exception as exc:  # ORT reports shape/type mismatches as opaque runtime errors
            raise InvalidInputError(f"stage rejected its inputs: {' '.join(str(exc).split())[:300]}") from exc
        self._slow.stretch((tuple(needed), tuple(outputs)), started)
        return dict(zip(outputs, values, strict=True))
