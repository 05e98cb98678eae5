"""Stored precision and computed precision.

A target compiled to FP16 stores FP16 weights: half the bytes on disk, in memory budgets and over the
wire when a package is shipped. It computes in FP16 only where the provider has fast FP16 kernels (a
GPU, an NPU). ONNX Runtime's CPU provider has few, so an FP16 graph runs slower there than the FP32
one it came from (demo-image's edge target, 64 px, one thread on this machine: the sampler 0.49 s in
FP16 against 0.35 s widened). On such a provider a node widens the weights to FP32 when it loads them:
the numbers computed are those of FP16-rounded weights in FP32 arithmetic, and the model keeps the
identity (sha256) of what was stored.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, numpy_helper

# providers whose kernels compute FP16 natively (the others run an FP16 graph slower than FP32)
FP16_PROVIDERS = frozenset({
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "QNNExecutionProvider",
})


def computes_fp16(provider: str) -> bool:
    """Whether ``provider`` runs FP16 arithmetic faster than FP32."""
    return provider in FP16_PROVIDERS


def should_widen(model: onnx.ModelProto, provider: str) -> bool:
    """Whether to widen ``model`` before running it on ``provider``: FP16 weights, a provider without
    fast FP16 kernels, and no subgraphs (whose types :func:`widen_fp16` does not rewrite)."""
    fp16 = any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    if computes_fp16(provider) or not fp16:
        return False
    return not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for n in model.graph.node for a in n.attribute)


def widen_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that computes in FP32 wherever it computed in FP16 (weights, constants,
    casts and declared types); everything else is unchanged."""
    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    graph = wide.graph
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT16:
            graph.initializer[i].CopyFrom(_float32(tensor))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(_float32(attr.t))
    for value in (*graph.input, *graph.output, *graph.value_info):
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type == TensorProto.FLOAT16:
            tensor_type.elem_type = TensorProto.FLOAT
    return wide


def _float32(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype("float32"), tensor.name)


def for_provider(model: onnx.ModelProto, provider: str) -> tuple[onnx.ModelProto, bool]:
    """The graph to run on ``provider`` (``model`` itself, or its widened copy) and whether it was widened."""
    if should_widen(model, provider):
        return widen_fp16(model), True
    return model, False
