"""Small helpers to write ONNX graphs by hand with ``onnx.helper`` and seeded numpy weights.

The bundled demo models (``random-image``, ``demo-vision``) are built with
:class:`GraphBuilder` so they share one vocabulary of layers (conv, norm,
activations, Gemm, resize) and one weight initialisation: He-style normal
weights drawn from a ``numpy.random.Generator`` with a fixed seed, so the same
seed always gives the same bytes.

Naming: every layer takes a ``prefix`` (the block it belongs to, such as
``gen_block2``); its nodes are named ``<prefix>/<layer>`` and, unless an output
name is given, the tensor a node writes has the node's name. Block boundaries
are therefore readable in the graph and stable across builds.

:func:`node_macs` counts multiply-accumulates of Conv / Gemm / MatMul nodes from
the graph at concrete input shapes -- a cost measure that does not depend on
the machine (the planner's profiler measures time separately).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset 17 is what every execution provider and the ORT quantizer handle today
# (TensorRT, QNN, CoreML, OpenVINO); the demo models need nothing newer.
OPSET = 17
IR_VERSION = 8

ACTIVATIONS = ("relu", "leaky_relu", "silu", "tanh", "sigmoid")


class GraphBuilder:
    """Accumulates nodes and initialisers; :meth:`model` turns them into a checked ModelProto."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()

    # --- plumbing -------------------------------------------------------------

    def _unique(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate name in graph: {name}")
        self._names.add(name)
        return name

    def input(self, name: str, shape: Sequence[int | str], elem_type: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(self._unique(name), elem_type, list(shape)))
        return name

    def output(self, name: str, shape: Sequence[int | str], elem_type: int = TensorProto.FLOAT) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), self._unique(name)))
        return name

    def weight(self, name: str, shape: Sequence[int], std: float) -> str:
        """A float32 initialiser drawn from N(0, std^2) with the builder's generator."""
        return self.const(name, (self.rng.standard_normal(tuple(shape)) * std).astype(np.float32))

    def node(self, op: str, inputs: Sequence[str], name: str, out: str | None = None, **attrs: Any) -> str:
        """Add one node called ``name``; returns its (single) output tensor name."""
        output = out or name
        self._unique(name)
        if output != name:
            self._unique(output)
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attrs))
        return output

    # --- layers ---------------------------------------------------------------

    def conv(
        self,
        prefix: str,
        x: str,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        gain: float = math.sqrt(2.0),
        out: str | None = None,
        bias: bool = True,
    ) -> str:
        """A square ``kernel`` conv with 'same' padding (for stride 1); He init scaled by ``gain``."""
        std = gain / math.sqrt(c_in * kernel * kernel)
        inputs = [x, self.weight(f"{prefix}.weight", (c_out, c_in, kernel, kernel), std)]
        if bias:
            inputs.append(self.const(f"{prefix}.bias", np.zeros(c_out, np.float32)))
        pad = kernel // 2
        return self.node(
            "Conv", inputs, prefix, out, kernel_shape=[kernel, kernel], strides=[stride, stride],
            pads=[pad, pad, pad, pad],
        )

    def gemm(self, prefix: str, x: str, n_in: int, n_out: int, gain: float = 1.0,
             bias_value: float = 0.0, out: str | None = None) -> str:
        """``x @ W^T + b`` on a [batch, n_in] tensor; every bias is ``bias_value`` (1.0 for a FiLM scale)."""
        w = self.weight(f"{prefix}.weight", (n_out, n_in), gain / math.sqrt(n_in))
        b = self.const(f"{prefix}.bias", np.full(n_out, bias_value, np.float32))
        return self.node("Gemm", [x, w, b], prefix, out, transB=1)

    def instance_norm(self, prefix: str, x: str, channels: int, out: str | None = None) -> str:
        """Per-sample, per-channel normalisation over the spatial axes (unit scale, zero shift)."""
        scale = self.const(f"{prefix}.scale", np.ones(channels, np.float32))
        shift = self.const(f"{prefix}.shift", np.zeros(channels, np.float32))
        return self.node("InstanceNormalization", [x, scale, shift], prefix, out, epsilon=1e-5)

    def batch_norm(self, prefix: str, x: str, channels: int, out: str | None = None) -> str:
        """Inference-mode batch norm with plausible random statistics (ORT folds it into the conv)."""
        rng = self.rng
        scale = self.const(f"{prefix}.scale", (1.0 + 0.1 * rng.standard_normal(channels)).astype(np.float32))
        shift = self.const(f"{prefix}.shift", (0.1 * rng.standard_normal(channels)).astype(np.float32))
        mean = self.const(f"{prefix}.mean", (0.1 * rng.standard_normal(channels)).astype(np.float32))
        var = self.const(f"{prefix}.var", rng.uniform(0.8, 1.2, channels).astype(np.float32))
        return self.node("BatchNormalization", [x, scale, shift, mean, var], prefix, out, epsilon=1e-5)

    def act(self, prefix: str, x: str, kind: str = "leaky_relu", out: str | None = None) -> str:
        """An activation; ``silu`` is written as ``x * sigmoid(x)`` (ONNX has no SiLU op at opset 17)."""
        if kind == "relu":
            return self.node("Relu", [x], prefix, out)
        if kind == "leaky_relu":
            return self.node("LeakyRelu", [x], prefix, out, alpha=0.2)
        if kind == "tanh":
            return self.node("Tanh", [x], prefix, out)
        if kind == "sigmoid":
            return self.node("Sigmoid", [x], prefix, out)
        if kind == "silu":
            sig = self.node("Sigmoid", [x], f"{prefix}_sigmoid")
            return self.node("Mul", [x, sig], prefix, out)
        raise ValueError(f"unknown activation {kind!r}; one of {', '.join(ACTIVATIONS)}")

    def resize2x(self, prefix: str, x: str, mode: str = "linear", out: str | None = None) -> str:
        """x2 upsampling of the two spatial axes of an NCHW tensor (``linear`` or ``nearest``)."""
        scales = self.const(f"{prefix}.scales", np.array([1.0, 1.0, 2.0, 2.0], np.float32))
        return self.node("Resize", [x, "", scales], prefix, out, mode=mode)

    def add(self, name: str, a: str, b: str, out: str | None = None) -> str:
        return self.node("Add", [a, b], name, out)

    def mul(self, name: str, a: str, b: str, out: str | None = None) -> str:
        return self.node("Mul", [a, b], name, out)

    def concat(self, name: str, xs: Sequence[str], axis: int = 1, out: str | None = None) -> str:
        return self.node("Concat", list(xs), name, out, axis=axis)

    def unsqueeze_hw(self, name: str, x: str) -> str:
        """[batch, C] -> [batch, C, 1, 1], to broadcast a per-channel vector over an image."""
        axes = self.const(f"{name}.axes", np.array([2, 3], np.int64))
        return self.node("Unsqueeze", [x, axes], name)

    # --- the model --------------------------------------------------------------

    def model(self, graph_name: str, doc: str, metadata: Mapping[str, str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="tierflow",
            doc_string=doc,
        )
        helper.set_model_props(model, dict(metadata))
        onnx.checker.check_model(model, full_check=True)
        return model


# --- cost from the graph ----------------------------------------------------------


def with_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of ``model`` whose named inputs have the given concrete shapes, shapes inferred throughout."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for value in fixed.graph.input:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shapes[value.name]):
            raise ValueError(f"input {value.name} has rank {len(dims)}, got shape {list(shapes[value.name])}")
        for dim, size in zip(dims, shapes[value.name], strict=True):
            dim.Clear()
            dim.dim_value = int(size)
    for value in fixed.graph.output:  # let inference recompute output shapes from the new inputs
        value.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(fixed, strict_mode=True)


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[value.name] = tuple(d.dim_value for d in tensor.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def node_macs(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Multiply-accumulates of each Conv / Gemm / MatMul node at the given input shapes.

    Other nodes (norms, activations, resizes, adds) are memory-bound and cost
    a few operations per element; they are left out, as MAC counts usually do.
    """
    inferred = with_input_shapes(model, input_shapes)
    shapes = _static_shapes(inferred)
    macs: dict[str, int] = {}
    for node in inferred.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        out = shapes.get(node.output[0])
        w = shapes.get(node.input[1])
        if out is None or w is None:
            raise ValueError(f"cannot count MACs of {node.name}: shapes unknown at these input shapes")
        if node.op_type == "Conv":
            # each output element needs (c_in / groups) * kh * kw MACs = prod(weight.shape[1:])
            macs[node.name] = math.prod(out) * math.prod(w[1:])
        else:
            a = shapes[node.input[0]]
            trans_a = node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if trans_a else a[-1]
            macs[node.name] = math.prod(out) * k
    return macs


def count_macs(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> int:
    """Total multiply-accumulates of ``model`` at the given input shapes (see :func:`node_macs`)."""
    return sum(node_macs(model, input_shapes).values())


def parameter_count(model: onnx.ModelProto, prefixes: Iterable[str] | None = None) -> int:
    """Number of initialiser elements, optionally only those whose name starts with one of ``prefixes``."""
    keep = tuple(prefixes) if prefixes is not None else None
    return sum(
        math.prod(init.dims) for init in model.graph.initializer if keep is None or init.name.startswith(keep)
    )
