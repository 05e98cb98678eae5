"""Small but real models for the compiler / package / loader tests, built with onnx.helper.

* :func:`build_lm` -- a pre-norm transformer LM in tierflow's LM contract: token and
  position embeddings, causal multi-head attention with a KV cache, an MLP per layer,
  an early-exit head after ``exit_layer`` layers (output ``exit_logits``) and a final head.
  Random weights; every weight is an initializer a quantizer can see.
* :func:`build_classifier` -- a conv classifier with no tierflow metadata (a "foreign"
  vision model, as a user would bring one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support.tiny_lm import tiny_tokenizer_json
from tierflow.model import lm_contract as lc
from tierflow.model import metadata as md
from tierflow.types import ModelKind

F = TensorProto.FLOAT
I64 = TensorProto.INT64


class _G:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def w(self, name: str, shape: tuple[int, ...], scale: float | None = None) -> str:
        scale = scale if scale is not None else 1.0 / np.sqrt(shape[0])
        self.inits.append(
            numpy_helper.from_array((self.rng.normal(size=shape) * scale).astype(np.float32), name)
        )
        return name

    def c(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op: str, inputs: list[str], out: str | None = None, **attrs: object) -> str:
        self._n += 1
        out = out or f"t{self._n}_{op}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"n{self._n}_{op}", **attrs))
        return out

    def ln(self, prefix: str, x: str, dim: int) -> str:
        scale = self.c(f"{prefix}.ln.w", np.ones(dim, np.float32))
        bias = self.c(f"{prefix}.ln.b", np.zeros(dim, np.float32))
        return self.op("LayerNormalization", [x, scale, bias], axis=-1)


def build_lm(
    layers: int = 4,
    exit_layer: int | None = 2,
    heads: int = 2,
    head_dim: int = 16,
    vocab: int | None = None,
    max_seq_len: int = 64,
    seed: int = 0,
) -> onnx.ModelProto:
    tokenizer = vocab is None
    vocab = vocab or 17  # the tiny word-level tokenizer's vocabulary
    dim = heads * head_dim
    g = _G(seed)
    g.c("split_shape", np.array([0, 0, heads, head_dim], np.int64))
    g.c("merge_shape", np.array([0, 0, dim], np.int64))
    g.c("one", np.array(1, np.int64))
    g.c("zero", np.array(0, np.int64))
    g.c("neg", np.array(-1e9, np.float32))
    g.c("scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    g.c("ax0", np.array([0], np.int64))
    g.c("ax1", np.array([1], np.int64))

    tok = g.op("Gather", [g.w("wte", (vocab, dim), 0.5), lc.INPUT_IDS])
    pos = g.op("Gather", [g.w("wpe", (max_seq_len, dim), 0.1), lc.POSITION_IDS])
    x = g.op("Add", [tok, pos])
    seq = g.op("Gather", [g.op("Shape", [lc.INPUT_IDS]), "one"], axis=0)

    def heads_of(t: str) -> str:
        return g.op("Transpose", [g.op("Reshape", [t, "split_shape"])], perm=[0, 2, 1, 3])

    exit_logits = None
    for i in range(layers):
        p = f"layers.{i}"
        h = g.ln(f"{p}.attn", x, dim)
        q = heads_of(g.op("MatMul", [h, g.w(f"{p}.wq", (dim, dim))]))
        k = heads_of(g.op("MatMul", [h, g.w(f"{p}.wk", (dim, dim))]))
        v = heads_of(g.op("MatMul", [h, g.w(f"{p}.wv", (dim, dim))]))
        key = g.op("Concat", [lc.past_name(i, "key"), k], lc.present_name(i, "key"), axis=2)
        value = g.op("Concat", [lc.past_name(i, "value"), v], lc.present_name(i, "value"), axis=2)
        total = g.op("Gather", [g.op("Shape", [key]), g.c(f"{p}.two", np.array(2, np.int64))], axis=0)
        past = g.op("Sub", [total, seq])
        rows = g.op("Unsqueeze", [g.op("Range", [past, total, "one"]), "ax1"])
        cols = g.op("Unsqueeze", [g.op("Range", ["zero", total, "one"]), "ax0"])
        allowed = g.op("LessOrEqual", [cols, rows])
        scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [key], perm=[0, 1, 3, 2])]), "scale"])
        att = g.op("Softmax", [g.op("Where", [allowed, scores, "neg"])], axis=-1)
        ctx = g.op(
            "Reshape", [g.op("Transpose", [g.op("MatMul", [att, value])], perm=[0, 2, 1, 3]), "merge_shape"]
        )
        x = g.op("Add", [x, g.op("MatMul", [ctx, g.w(f"{p}.wo", (dim, dim))])])
        m = g.op("Relu", [g.op("MatMul", [g.ln(f"{p}.mlp", x, dim), g.w(f"{p}.w1", (dim, 2 * dim))])])
        x = g.op("Add", [x, g.op("MatMul", [m, g.w(f"{p}.w2", (2 * dim, dim))])])
        if exit_layer is not None and i == exit_layer - 1:
            exit_logits = g.op(
                "MatMul", [g.ln("exit", x, dim), g.w("exit_head", (dim, vocab))], lc.EXIT_LOGITS
            )
    g.op("MatMul", [g.ln("final", x, dim), g.w("head", (dim, vocab))], lc.LOGITS)

    kv = ["batch", heads, "past", head_dim]
    inputs = [
        helper.make_tensor_value_info(lc.INPUT_IDS, I64, ["batch", "seq"]),
        helper.make_tensor_value_info(lc.POSITION_IDS, I64, ["batch", "seq"]),
    ]
    outputs = [helper.make_tensor_value_info(lc.LOGITS, F, ["batch", "seq", vocab])]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(lc.past_name(i, kind), F, kv))
            outputs.append(
                helper.make_tensor_value_info(
                    lc.present_name(i, kind), F, ["batch", heads, "total", head_dim]
                )
            )
    meta = {
        md.KIND: ModelKind.CAUSAL_LM,
        md.MAX_SEQ_LEN: str(max_seq_len),
        md.NUM_LAYERS: str(layers),
    }
    if exit_logits is not None:
        outputs.append(helper.make_tensor_value_info(lc.EXIT_LOGITS, F, ["batch", "seq", vocab]))
        meta[md.EXIT_LAYER] = str(exit_layer)
    if tokenizer:
        meta[md.TOKENIZER] = tiny_tokenizer_json()
    graph = helper.make_graph(g.nodes, "tiny_pyramid_lm", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def build_classifier(channels: int = 8, classes: int = 10, side: int = 32, seed: int = 1) -> onnx.ModelProto:
    """conv-relu-conv-relu (+ skip) -> pool -> Gemm: a plain ONNX vision model, no tierflow metadata."""
    g = _G(seed)
    c = channels
    h = g.op(
        "Relu",
        [g.op("Conv", ["pixels", g.w("c1.w", (c, 3, 3, 3), 0.3), g.w("c1.b", (c,), 0.1)], pads=[1] * 4)],
    )
    r = g.op(
        "Relu",
        [g.op("Conv", [h, g.w("c2.w", (c, c, 3, 3), 0.2), g.w("c2.b", (c,), 0.1)], pads=[1] * 4)],
        "features",
    )
    s = g.op("Add", [h, r])
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [s])])
    g.op("Gemm", [pooled, g.w("fc.w", (classes, c), 1.0), g.w("fc.b", (classes,), 0.1)], "scores", transB=1)
    graph = helper.make_graph(
        g.nodes,
        "foreign_classifier",
        [helper.make_tensor_value_info("pixels", F, [1, 3, side, side])],
        [helper.make_tensor_value_info("scores", F, [1, classes])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path
