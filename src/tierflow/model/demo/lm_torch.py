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
from dataclasses import asdict, dataclass

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
    d_ff: int = 768
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
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, seq, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.reshape(batch, seq, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        if self.training:
            # Training never has a past: the fused kernel with a plain causal mask is fastest.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout)
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
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
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
