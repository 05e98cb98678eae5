"""The three bundled models for planner tests, loaded once per session."""

from __future__ import annotations

from functools import cache, lru_cache
from pathlib import Path

import onnx
import pytest

from tierflow.model.registry import BUNDLED, resolve_model
from tierflow.runtime.session import SessionOptions

OPTIONS = SessionOptions(intra_op_threads=1, providers=("CPUExecutionProvider",))
BUNDLED_NAMES = ("demo-lm", "random-image", "demo-vision")


@cache
def bundled(name: str) -> onnx.ModelProto:
    """A bundled model. While the trained demo-lm asset is not in this checkout, the same
    architecture is exported with untrained weights (the graph is what the planner cuts)."""
    if name == "demo-lm" and not BUNDLED[name].path().is_file():
        return _untrained_demo_lm()
    return onnx.load(str(resolve_model(name)))


@lru_cache(maxsize=1)
def _untrained_demo_lm() -> onnx.ModelProto:
    torch = pytest.importorskip("torch", reason="demo-lm asset missing and torch not installed")
    import tempfile

    from tierflow.model.demo.lm_torch import DemoLM, LMConfig, export_onnx

    torch.manual_seed(0)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo-lm.onnx"
        export_onnx(DemoLM(LMConfig(dropout=0.0)), str(path), {"tierflow.kind": "causal-lm"})
        return onnx.load(str(path))
