"""Change a target's precision: INT8 (ONNX Runtime quantization), FP16, or FP32 as is.

* **INT8, language models -- dynamic quantization** (``quantize_dynamic``): weights of
  MatMul / Gemm and the embedding Gather become INT8 with per-channel scales;
  activations are quantized per call from their actual range. Transformer
  activations have a few large outlier channels whose range changes token by
  token, so one static range fixed at calibration time costs much more accuracy
  than measuring it on the fly; and the size win (what the phone target needs)
  comes from the weights either way.
* **INT8, conv models -- static QDQ quantization** (``quantize_static``) calibrated
  with MinMax on inputs the compiler generates (or the user gives): conv
  activations are well behaved, and static scales let every Conv run as an
  integer kernel with no range pass per call. Only weight-bearing ops (Conv,
  ConvTranspose, MatMul, Gemm) are quantized; element-wise ops stay FP32, which
  keeps fidelity high at the same artifact size.
* **FP16** (``onnxruntime.transformers.float16``) with ``keep_io_types``: callers
  keep FP32 inputs and outputs. Ops the CPU provider has no FP16 kernel for are
  found by opening the result and are kept in FP32 (a retry adds them to the
  block list), so the artifact runs everywhere.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tierflow.errors import InvalidModelError

Feeds = dict[str, np.ndarray]

STATIC_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]
DYNAMIC_OPS = ["MatMul", "Gemm", "Gather"]
_MISSING_KERNEL = re.compile(r"implementation for (\w+)\(")


def to_fp16(model: onnx.ModelProto, max_retries: int = 8) -> onnx.ModelProto:
    """FP16 weights and compute, FP32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    blocked: list[str] = []
    for _ in range(max_retries):
        with _quiet():
            converted: onnx.ModelProto = convert_float_to_float16(
                _clone(model), keep_io_types=True, op_block_list=blocked or None, disable_shape_infer=False
            )
        reason = _cpu_load_error(converted)
        if reason is None:
            return converted
        missing = _MISSING_KERNEL.search(reason)
        if missing is None or missing.group(1) in blocked:
            raise InvalidModelError(f"the FP16 variant does not load in ONNX Runtime: {reason}")
        blocked.append(missing.group(1))
    raise InvalidModelError(f"the FP16 variant still fails to load after keeping {blocked} in FP32")


def to_int8_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weight INT8 (per channel), activation ranges measured per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="tierflow-q") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        with _quiet():
            quantize_dynamic(
                src,
                dst,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=DYNAMIC_OPS,
                extra_options={"MatMulConstBOnly": True},
            )
        return _with_metadata(onnx.load(str(dst)), model)


def to_int8_static(model: onnx.ModelProto, calibration: Sequence[Feeds]) -> onnx.ModelProto:
    """QDQ INT8 with activation scales calibrated (MinMax) on ``calibration`` feeds."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise InvalidModelError("static INT8 quantization needs at least one calibration input")

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it: Iterator[Feeds] = iter(calibration)

        def get_next(self) -> Feeds | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="tierflow-q") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        with _quiet():
            quantize_static(
                src,
                dst,
                Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=STATIC_OPS,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        return _with_metadata(onnx.load(str(dst)), model)


def has_conv(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node)


def _with_metadata(out: onnx.ModelProto, source: onnx.ModelProto) -> onnx.ModelProto:
    """Quantizers may drop ``metadata_props``; put the source's back."""
    del out.metadata_props[:]
    out.metadata_props.extend(source.metadata_props)
    return out


def _clone(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _cpu_load_error(model: onnx.ModelProto) -> str | None:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    try:
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's exception types are opaque
        return " ".join(str(exc).split())
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantization tools print warnings and progress to stdout/logging; keep the CLI clean."""
    import logging

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
