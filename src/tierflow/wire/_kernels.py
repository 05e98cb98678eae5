"""Elementwise kernels of the frame path, run by ONNX Runtime on one thread.

numpy casts float32 -> float16 at ~1.3 GB/s and quantizes in three passes (multiply, round,
cast); ONNX Runtime's MLAS kernels (QuantizeLinear, DequantizeLinear, Cast) are vectorised single
passes at 10-40 GB/s. Each kernel is a tiny ONNX graph built once per process; outputs are bound
to numpy arrays the caller allocated, so no result is copied on the way out.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import onnxruntime as ort
from onnx import GraphProto, TensorProto, helper

_OPSET = 21
_V = helper.make_tensor_value_info
_F, _H, _S8, _U8 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT8, TensorProto.UINT8

# Inputs are 1-D ("n") for per-tensor kernels and 3-D ("a", "c", "b") for per-channel ones: any
# tensor reshapes to (elements before the axis, channels, elements after it) without a copy.
_N = ["n"]
_ACB = ["a", "c", "b"]


def _cast(src: int, dst: int) -> GraphProto:
    return helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=dst)], "cast", [_V("x", src, _N)], [_V("y", dst, _N)]
    )


def _q_tensor(zt: int) -> GraphProto:
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    ins = [_V("x", _F, _N), _V("s", _F, []), _V("z", zt, [])]
    return helper.make_graph([node], "q_tensor", ins, [_V("y", zt, _N)])


def _dq_tensor(zt: int) -> GraphProto:
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])
    ins = [_V("q", zt, _N), _V("s", _F, []), _V("z", zt, [])]
    return helper.make_graph([node], "dq_tensor", ins, [_V("y", _F, _N)])


def _q_axis(zt: int) -> GraphProto:
    # Per-axis QuantizeLinear: fast when the channel stride ("b") is long, slow when b == 1.
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=1)
    ins = [_V("x", _F, _ACB), _V("s", _F, ["c"]), _V("z", zt, ["c"])]
    return helper.make_graph([node], "q_axis", ins, [_V("y", zt, _ACB)])


def _dq_axis(zt: int) -> GraphProto:
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)
    ins = [_V("q", zt, _ACB), _V("s", _F, ["c"]), _V("z", zt, ["c"])]
    return helper.make_graph([node], "dq_axis", ins, [_V("y", _F, _ACB)])


def _q_bcast(zt: int) -> GraphProto:
    # Channels innermost: multiply by 1/scale with broadcasting (vectorised), add the zero point as a
    # float (round(v + z) == round(v) + z for integer z), then one per-tensor QuantizeLinear with
    # scale 1 rounds half to even and saturates.
    one = helper.make_tensor("one", _F, [], [1.0])
    zero = helper.make_tensor("zero", zt, [], [0])
    nodes = [helper.make_node("Mul", ["x", "inv"], ["t"])]
    ins = [_V("x", _F, _ACB), _V("inv", _F, [1, "c", 1])]
    last = "t"
    if zt == _U8:
        nodes.append(helper.make_node("Add", ["t", "zf"], ["u"]))
        ins.append(_V("zf", _F, [1, "c", 1]))
        last = "u"
    nodes.append(helper.make_node("QuantizeLinear", [last, "one", "zero"], ["y"]))
    return helper.make_graph(nodes, "q_bcast", ins, [_V("y", zt, _ACB)], initializer=[one, zero])


# Rows per block of the blocked DequantizeLinear below; callers split taller inputs.
BLOCK_ROWS = 1 << 30


def _dq_block(zt: int) -> GraphProto:
    # Blocked DequantizeLinear (opset 21) along axis 0 with one block covering every row: scale and
    # zero point have shape (1, c, b), i.e. per (channel, position) -- per channel once the caller
    # repeats each channel's scale b times. Unlike per-axis dequantization, MLAS runs this vectorised
    # when channels are innermost.
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=0, block_size=BLOCK_ROWS)
    ins = [_V("q", zt, _ACB), _V("s", _F, [1, "c", "b"]), _V("z", zt, [1, "c", "b"])]
    return helper.make_graph([node], "dq_block", ins, [_V("y", _F, _ACB)])


def _reduce_axis() -> GraphProto:
    # NaN does not reliably propagate through ORT's reductions: callers check finiteness apart.
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [0, 2])
    nodes = [
        helper.make_node("ReduceMax", ["x", "axes"], ["mx"], keepdims=0),
        helper.make_node("ReduceMin", ["x", "axes"], ["mn"], keepdims=0),
    ]
    outs = [_V("mx", _F, ["c"]), _V("mn", _F, ["c"])]
    return helper.make_graph(nodes, "reduce_axis", [_V("x", _F, _ACB)], outs, initializer=[axes])


_BUILDERS: dict[str, Callable[[], GraphProto]] = {
    "cast_f32_f16": lambda: _cast(_F, _H),
    "cast_f16_f32": lambda: _cast(_H, _F),
    "q_tensor_s8": lambda: _q_tensor(_S8),
    "q_tensor_u8": lambda: _q_tensor(_U8),
    "dq_tensor_s8": lambda: _dq_tensor(_S8),
    "dq_tensor_u8": lambda: _dq_tensor(_U8),
    "q_axis_s8": lambda: _q_axis(_S8),
    "q_axis_u8": lambda: _q_axis(_U8),
    "dq_axis_s8": lambda: _dq_axis(_S8),
    "dq_axis_u8": lambda: _dq_axis(_U8),
    "q_bcast_s8": lambda: _q_bcast(_S8),
    "q_bcast_u8": lambda: _q_bcast(_U8),
    "dq_block_s8": lambda: _dq_block(_S8),
    "dq_block_u8": lambda: _dq_block(_U8),
    "reduce_axis": _reduce_axis,
}


@cache
def _session(name: str) -> ort.InferenceSession:
    model = helper.make_model(_BUILDERS[name](), opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # the frame path's budget is one core
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(name: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    """Run kernel ``name`` on C-contiguous ``inputs``, writing into the preallocated ``outputs``."""
    session = _session(name)
    binding = session.io_binding()
    for key, value in inputs.items():
        binding.bind_cpu_input(key, value)
    for key, out in outputs.items():
        binding.bind_output(key, "cpu", 0, out.dtype, out.shape, out.ctypes.data)
    session.run_with_iobinding(binding)
