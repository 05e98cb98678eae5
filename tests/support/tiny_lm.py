"""A tiny causal LM in tierflow's ONNX form, built with onnx.helper (no torch, no training).

Its logits depend on the cached keys, so a generation loop that mishandles
the KV cache gives different tokens than a full recompute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from tierflow.model import lm_contract as lc
from tierflow.model import metadata as md
from tierflow.types import ModelKind

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "fast", "slow", "and", "with", "to", "of", "in"]


def tiny_tokenizer_json() -> str:
    vocab = {w: i for i, w in enumerate(WORDS)}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return str(tok.to_str())


def build_tiny_lm(
    layers: int = 2, heads: int = 2, head_dim: int = 4, with_mask: bool = True, tokenizer: bool = True
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    vocab = len(WORDS) + 1
    dim = heads * head_dim
    inits = [
        numpy_helper.from_array(rng.normal(size=(vocab, dim)).astype(np.float32), "emb"),
        numpy_helper.from_array(rng.normal(size=(dim, vocab)).astype(np.float32), "head"),
        numpy_helper.from_array(np.array([0, 0, heads, head_dim], np.int64), "kv_shape"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "perm_axes"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
    ]
    nodes = [helper.make_node("Gather", ["emb", lc.INPUT_IDS], ["x"])]
    # x: [B, T, D] -> kv: [B, H, T, Dh]
    nodes.append(helper.make_node("Reshape", ["x", "kv_shape"], ["x4"]))
    nodes.append(helper.make_node("Transpose", ["x4"], ["kv_new"], perm=[0, 2, 1, 3]))
    hidden = "x"
    for i in range(layers):
        for kind in ("key", "value"):
            nodes.append(
                helper.make_node(
                    "Concat", [lc.past_name(i, kind), "kv_new"], [lc.present_name(i, kind)], axis=2
                )
            )
        # context = mean over all cached positions of the keys, flattened back to [B, 1, D]
        nodes.append(
            helper.make_node("ReduceMean", [lc.present_name(i, "key"), "axis2"], [f"ctx{i}"], keepdims=1)
        )
        nodes.append(helper.make_node("Transpose", [f"ctx{i}"], [f"ctxT{i}"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"ctxT{i}", "flat_shape"], [f"ctxF{i}"]))
        nodes.append(helper.make_node("Add", [hidden, f"ctxF{i}"], [f"h{i}"]))
        hidden = f"h{i}"
    inits.append(numpy_helper.from_array(np.array([0, 1, dim], np.int64), "flat_shape"))
    nodes.append(helper.make_node("MatMul", [hidden, "head"], [lc.LOGITS]))
    kv = ["batch", heads, "past", head_dim]
    inputs = [helper.make_tensor_value_info(lc.INPUT_IDS, TensorProto.INT64, ["batch", "seq"])]
    if with_mask:
        inputs.append(helper.make_tensor_value_info(lc.ATTENTION_MASK, TensorProto.INT64, ["batch", "total"]))
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(lc.past_name(i, kind), TensorProto.FLOAT, kv))
    outputs = [helper.make_tensor_value_info(lc.LOGITS, TensorProto.FLOAT, ["batch", "seq", vocab])]
    for i in range(layers):
        for kind in ("key", "value"):
            outputs.append(
                helper.make_tensor_value_info(
                    lc.present_name(i, kind), TensorProto.FLOAT, ["batch", heads, "total", head_dim]
                )
            )
    graph = helper.make_graph(nodes, "tiny_lm", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {md.KIND: ModelKind.CAUSAL_LM, md.MAX_SEQ_LEN: "32"}
    if tokenizer:
        meta[md.TOKENIZER] = tiny_tokenizer_json()
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


def save_tiny_lm(path: Path, **kwargs: object) -> Path:
    onnx.save(build_tiny_lm(**kwargs), str(path))  # type: ignore[arg-type]
    return path
