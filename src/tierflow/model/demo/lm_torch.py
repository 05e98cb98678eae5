"""``demo-lm`` in PyTorch: a small GPT with an explicit KV cache and an early-exit head.

The module is written so that the legacy TorchScript ONNX exporter gives a
clean graph in tierflow's LM contract (:mod:`tierflow.model.lm_contract`):

* ``forward(input_ids, position_ids, *past)`` takes the past keys/values as a
  flat list ``[k0, v0, k1, v1, ...]`` of ``[batch, heads, past, head_dim]``
  tensors (past may be 0 long) and returns ``(logits, k0', v0', ..., exit_logits)``.
* The early-exit head (its own LayerNorm + the tied embedding matrix) reads
  the hidden state after layer ``exit_layer - 1``, so the sub-graph
  ``layers 0..exit_layer-1 + exit head`` can be cut out of the exported file.
* Submodules are named ``blocks.{i}``, which the exporter turns into node
  names like ``/blocks.3/attn/MatMul``: layer boundaries stay visible.

torch is only needed to train and export; tierflow runs the ONNX file.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class LMConfig:
    vocab_size: int = 2048
    max_seq_len: int = 256
    d_model: int = 192
    n_heads: int = 6
    n_layers: int = 6
    d_ff: int = 576
    exit_layer: int = 3  # the exit head reads the output of blocks[exit_layer - 1]
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be a multiple of n_heads")
        if not 1 <= self.exit_layer < self.n_layers:
            raise ValueError("exit_layer must be in 1 .. n_layers - 1")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.d_model = cfg.n_heads, cfg.head_dim, cfg.d_model
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: Tensor, past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, seq, d = x.shape[0], x.shape[1], self.d_model
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.reshape(batch, seq, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        if self.training:
            # Training never has a past: the fused kernel with a plain causal mask is fastest.
            # (No attention dropout: on CPU it forces the slow unfused path.)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Query i sits at position past + i and may see keys 0 .. past + i.
            past_len = k.shape[2] - seq
            q_pos = torch.arange(seq, device=x.device).unsqueeze(1) + past_len
            k_pos = torch.arange(k.shape[2], device=x.device).unsqueeze(0)
            scores = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(self.head_dim))
            scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
            y = torch.matmul(torch.softmax(scores, dim=-1), v)
        y = y.transpose(1, 2).reshape(batch, seq, d)
        return self.proj(y), k, v


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, k, v = self.attn(self.ln1(x), past_k, past_v)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, k, v


class DemoLM(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.ln_exit = nn.LayerNorm(cfg.d_model)
        self.apply(self._init)
        # GPT-2's scaled init of the residual projections keeps early training stable.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def empty_past(self, batch: int = 1) -> list[Tensor]:
        shape = (batch, self.cfg.n_heads, 0, self.cfg.head_dim)
        device = self.wte.weight.device
        return [torch.zeros(shape, device=device) for _ in range(2 * self.cfg.n_layers)]

    def head(self, h: Tensor) -> Tensor:
        """The tied output head: hidden states -> vocabulary logits."""
        return torch.matmul(h, self.wte.weight.t())

    def forward(self, input_ids: Tensor, position_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        """Return ``(logits, present k0, v0, ..., k{L-1}, v{L-1}, exit_logits)``."""
        if len(past) != 2 * self.cfg.n_layers:
            raise ValueError(f"expected {2 * self.cfg.n_layers} past tensors, got {len(past)}")
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        presents: list[Tensor] = []
        exit_logits: Tensor | None = None
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, past[2 * i], past[2 * i + 1])
            presents += [k, v]
            if i == self.cfg.exit_layer - 1:
                exit_logits = self.head(self.ln_exit(x))
        assert exit_logits is not None
        return (self.head(self.ln_f(x)), *presents, exit_logits)

    def losses(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Next-token cross-entropy of the final and the exit head on ``ids`` [batch, seq + 1]."""
        inputs, targets = ids[:, :-1], ids[:, 1:]
        positions = torch.arange(inputs.shape[1], device=ids.device).expand_as(inputs)
        out = self(inputs, positions, *self.empty_past(inputs.shape[0]))
        vocab = self.cfg.vocab_size
        main = F.cross_entropy(out[0].reshape(-1, vocab), targets.reshape(-1))
        exit_ = F.cross_entropy(out[-1].reshape(-1, vocab), targets.reshape(-1))
        return main, exit_


# --- ONNX export -------------------------------------------------------------


def onnx_names(n_layers: int) -> tuple[list[str], list[str]]:
    """Input and output names of the exported graph, in the order ``forward`` uses."""
    kv = [(i, kind) for i in range(n_layers) for kind in ("key", "value")]
    inputs = ["input_ids", "position_ids"] + [f"past_key_values.{i}.{kind}" for i, kind in kv]
    outputs = ["logits"] + [f"present.{i}.{kind}" for i, kind in kv] + ["exit_logits"]
    return inputs, outputs


def export_onnx(model: DemoLM, path: str, metadata: dict[str, str], opset: int = 17) -> None:
    """Write ``model`` in tierflow's LM contract to ``path`` with ``metadata`` as metadata_props."""
    import onnx

    cfg = model.cfg
    model.eval()
    inputs, outputs = onnx_names(cfg.n_layers)
    # Trace with a non-empty past so the Concat of past and new keys stays in the graph;
    # every axis that varies at run time is declared dynamic below.
    past_len, seq = 2, 3
    ids = torch.randint(0, cfg.vocab_size, (1, seq))
    pos = torch.arange(past_len, past_len + seq).unsqueeze(0)
    past = [torch.randn(1, cfg.n_heads, past_len, cfg.head_dim) for _ in range(2 * cfg.n_layers)]
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "seq"} for n in inputs[:2]}
    axes.update({n: {0: "batch", 2: "past"} for n in inputs[2:]})
    axes.update({n: {0: "batch", 2: "total"} for n in outputs[1:-1]})
    axes.update({"logits": {0: "batch", 1: "seq"}, "exit_logits": {0: "batch", 1: "seq"}})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is wanted: cleaner graph
        torch.onnx.export(
            model, (ids, pos, *past), path, input_names=inputs, output_names=outputs,
            dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    proto = onnx.load(path)
    _tidy_names(proto.graph)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = "tierflow demo-lm: decoder-only transformer with KV cache and an early-exit head"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)


def max_export_error(model: DemoLM, path: str, threads: int = 2) -> float:
    """Largest |ORT - torch| over all outputs for a few batch / past / sequence shapes."""
    import numpy as np
    import onnxruntime as ort

    cfg = model.cfg
    model.eval()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inputs, _ = onnx_names(cfg.n_layers)
    gen = torch.Generator().manual_seed(123)
    worst = 0.0
    for batch, past_len, seq in ((1, 0, 7), (1, 5, 1), (2, 9, 4), (1, 0, cfg.max_seq_len)):
        ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen)
        pos = torch.arange(past_len, past_len + seq).expand(batch, seq)
        past = [torch.randn(batch, cfg.n_heads, past_len, cfg.head_dim, generator=gen)
                for _ in range(2 * cfg.n_layers)]
        with torch.no_grad():
            expected = [t.numpy() for t in model(ids, pos, *past)]
        got = sess.run(None, dict(zip(inputs, [t.numpy() for t in (ids, pos, *past)], strict=True)))
        worst = max(worst, *(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True)))
    return worst


def _tidy_names(graph: Any) -> None:  # an onnx.GraphProto (onnx is imported lazily)
    """Name the two heads' MatMuls and the exporter's ``onnx::MatMul_N`` weights after their layer."""
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/MatMul"):
            src = producers.get(node.input[0])
            from_exit = src is not None and src.name.startswith("/ln_exit/")
            node.name = "/exit_head/MatMul" if from_exit else "/lm_head/MatMul"
    initializers = {init.name: init for init in graph.initializer}
    renames: dict[str, str] = {}
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else ""
        if weight.startswith("onnx::") and weight in initializers and weight not in renames:
            parts: list[str] = []
            for part in node.name.strip("/").split("/")[:-1]:  # "/blocks.0/mlp/mlp.0/MatMul"
                if parts and part.startswith(parts[-1] + "."):
                    part = part[len(parts[-1]) + 1:]
                parts.append(part)
            if parts[0] in ("exit_head", "lm_head"):
                parts = ["lm_head"]  # one matrix for both heads: the embedding, transposed
            renames[weight] = ".".join(parts) + ".weight_t"  # stored transposed: [in, out]
    for old, new in renames.items():
        initializers[old].name = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
