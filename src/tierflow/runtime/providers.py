"""Which ONNX Runtime execution provider to run on.

Detection reads ``onnxruntime.get_available_providers()`` -- never a guess.
The order below is the preference when several are present: dedicated
accelerators first (TensorRT before CUDA, since it compiles CUDA graphs),
then NPUs (Ascend CANN, Qualcomm QNN), then Apple / Intel / DirectML, CPU last.
"""

from __future__ import annotations

import onnxruntime as ort

PREFERENCE: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CANNExecutionProvider",
    "QNNExecutionProvider",
    "MIGraphXExecutionProvider",
    "ROCMExecutionProvider",
    "CoreMLExecutionProvider",
    "OpenVINOExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)

ACCELERATORS = frozenset(PREFERENCE) - {"CPUExecutionProvider"}


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def ranked_providers(available: list[str] | None = None) -> list[str]:
    """The available providers in preference order, always ending with CPU as a fallback."""
    have = set(available if available is not None else available_providers())
    ranked = [p for p in PREFERENCE if p in have]
    ranked += sorted(have - set(PREFERENCE))  # providers we do not know still get a chance
    if "CPUExecutionProvider" not in ranked:
        ranked.append("CPUExecutionProvider")
    return ranked


def short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``CUDA``."""
    return provider.removesuffix("ExecutionProvider")
