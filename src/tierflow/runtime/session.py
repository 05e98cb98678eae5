"""Open ONNX models as ONNX Runtime sessions with clear errors."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from tierflow.errors import InvalidModelError, ModelNotFoundError
from tierflow.model.lm_contract import TensorSpec
from tierflow.runtime.providers import ranked_providers

# A model given as bytes above this size is opened from a temporary file: ONNX Runtime holds more
# memory for a session made from bytes than from a file (a 24-layer Llama, 1.4 GB of weights: 3.7 GB
# against 2.6 GB, and 2.6 against 1.3 GB once freed memory is handed back; docs/ARCHITECTURE.md).
SPILL_BYTES = 32 * 2**20
SPILL_PREFIX = "tierflow-model-"


@dataclass(frozen=True)
class SessionOptions:
    """How a session runs. ``intra_op_threads=0`` lets ONNX Runtime choose."""

    intra_op_threads: int = 0
    providers: tuple[str, ...] | None = None  # None: best available

    @property
    def provider(self) -> str:
        """The provider a session opened with these options tries first."""
        return self.providers[0] if self.providers else ranked_providers()[0]


def open_session(model: str | Path | bytes, options: SessionOptions | None = None) -> ort.InferenceSession:
    """Open ``model`` (a path or the serialized bytes) on the best available provider."""
    options = options or SessionOptions()
    if isinstance(model, str | Path):
        path = Path(model)
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}")
        source: str | bytes = str(path)
        label = str(path)
    else:
        source, label = model, "<in-memory model>"
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if options.intra_op_threads:
        so.intra_op_num_threads = options.intra_op_threads
    providers = list(options.providers) if options.providers else ranked_providers()
    try:
        if isinstance(source, bytes) and len(source) > SPILL_BYTES:
            spilled = _from_spilled(source, so, providers)
            if spilled is not None:
                return spilled
        return ort.InferenceSession(source, sess_options=so, providers=providers)
    except Exception as exc:  # ORT raises its own exception types, all opaque
        raise InvalidModelError(f"{label} is not a valid ONNX model: {_ort_reason(exc)}") from exc


def _from_spilled(
    data: bytes, so: ort.SessionOptions, providers: list[str]
) -> ort.InferenceSession | None:
    """A session opened from ``data`` written to a temporary file (removed at once); None when the
    file cannot be written (a full disk), and the caller opens the bytes instead."""
    try:
        handle, name = tempfile.mkstemp(prefix=SPILL_PREFIX, suffix=".onnx")
    except OSError:
        return None
    try:
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
        except OSError:
            return None
        return ort.InferenceSession(name, sess_options=so, providers=providers)
    finally:
        with contextlib.suppress(OSError):
            os.remove(name)


def input_specs(session: ort.InferenceSession) -> list[TensorSpec]:
    return [TensorSpec(i.name, i.type, tuple(i.shape)) for i in session.get_inputs()]


def output_specs(session: ort.InferenceSession) -> list[TensorSpec]:
    return [TensorSpec(o.name, o.type, tuple(o.shape)) for o in session.get_outputs()]


def metadata(session: ort.InferenceSession) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def active_provider(session: ort.InferenceSession) -> str:
    return str(session.get_providers()[0])


def _ort_reason(exc: Exception) -> str:
    """The useful part of an ONNX Runtime error, on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return re.sub(r"^Load model from .*? failed:\s*", "", text)
