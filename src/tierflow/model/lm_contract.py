"""The ONNX form tierflow drives as a causal language model.

Every language model tierflow runs -- the bundled ``demo-lm`` and anything
``tierflow export`` writes -- has this signature (the names follow the
Hugging Face Optimum convention, so Optimum exports are accepted too):

inputs
  ``input_ids``                      int64   [batch, seq]
  ``attention_mask`` (optional)      int64   [batch, past + seq]      -- all ones, no padding
  ``position_ids`` (optional)        int64   [batch, seq]             -- past .. past + seq - 1
  ``past_key_values.{i}.key``        float   [batch, kv_heads, past, head_dim]   for i in 0..L-1
  ``past_key_values.{i}.value``      float   [batch, kv_heads, past, head_dim]
outputs
  ``logits``                         float   [batch, seq, vocab]
  ``present.{i}.key`` / ``present.{i}.value``  float [batch, kv_heads, past + seq, head_dim]

Extra outputs (for example ``exit_logits`` of an early-exit head) are allowed
and ignored by the generation loop; the compiler uses them to cut targets.

Model metadata (``metadata_props``, see :mod:`tierflow.model.metadata`) may carry the kind
(``causal-lm``), the tokenizer (a Hugging Face ``tokenizers`` JSON document) and the longest
context the model was built for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tierflow.errors import UnsupportedModelError

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"
EXIT_LOGITS = "exit_logits"

_PAST_RE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT_RE = re.compile(r"^present\.(\d+)\.(key|value)$")


def past_name(layer: int, kind: str) -> str:
    return f"past_key_values.{layer}.{kind}"


def layer_count(input_names: list[str]) -> int:
    """How many layers an LM's ``past_key_values.N.*`` inputs name (0 when none)."""
    layers = [int(m.group(1)) for n in input_names if (m := _PAST_RE.match(n))]
    return max(layers) + 1 if layers else 0


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    elem_type: str  # ONNX Runtime type string, e.g. "tensor(float)"
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class LMSignature:
    """What the generation loop needs to know about an LM's inputs and outputs."""

    num_layers: int
    kv_heads: int
    head_dim: int
    kv_dtype: str  # "float32" or "float16"
    has_attention_mask: bool
    has_position_ids: bool
    output_names: tuple[str, ...]

    @classmethod
    def from_specs(cls, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> LMSignature:
        """Check ``inputs``/``outputs`` against the contract; raise a one-line error if they break it."""
        by_name = {t.name: t for t in inputs}
        if INPUT_IDS not in by_name:
            raise UnsupportedModelError(
                f"model has no '{INPUT_IDS}' input (inputs: {', '.join(sorted(by_name)) or 'none'}); "
                "tierflow drives causal LMs with input_ids + per-layer past_key_values.N.key/value"
            )
        known = {INPUT_IDS, ATTENTION_MASK, POSITION_IDS}
        layers: dict[int, set[str]] = {}
        for name in by_name:
            m = _PAST_RE.match(name)
            if m:
                layers.setdefault(int(m.group(1)), set()).add(m.group(2))
            elif name not in known:
                raise UnsupportedModelError(f"model input '{name}' is not one tierflow can feed")
        if not layers:
            raise UnsupportedModelError(
                "model has no past_key_values.N.key/value inputs: no KV cache to drive"
            )
        num_layers = max(layers) + 1
        for i in range(num_layers):
            for kind in ("key", "value"):
                if kind not in layers.get(i, set()):
                    raise UnsupportedModelError(f"model is missing input {past_name(i, kind)}")
        out_names = {t.name for t in outputs}
        if LOGITS not in out_names:
            raise UnsupportedModelError("model has no 'logits' output")
        for i in range(num_layers):
            for kind in ("key", "value"):
                if present_name(i, kind) not in out_names:
                    raise UnsupportedModelError(f"model is missing output {present_name(i, kind)}")
        first = by_name[past_name(0, "key")]
        if len(first.shape) != 4:
            raise UnsupportedModelError(f"{first.name} must be 4-D [batch, heads, past, head_dim]")
        heads, head_dim = first.shape[1], first.shape[3]
        if not isinstance(heads, int) or not isinstance(head_dim, int):
            raise UnsupportedModelError(f"{first.name} must have static heads and head_dim dimensions")
        kv_dtype = {"tensor(float)": "float32", "tensor(float16)": "float16"}.get(first.elem_type)
        if kv_dtype is None:
            raise UnsupportedModelError(f"{first.name} has type {first.elem_type}; expected float or float16")
        return cls(
            num_layers=num_layers,
            kv_heads=heads,
            head_dim=head_dim,
            kv_dtype=kv_dtype,
            has_attention_mask=ATTENTION_MASK in by_name,
            has_position_ids=POSITION_IDS in by_name,
            output_names=tuple(t.name for t in outputs),
        )

    @staticmethod
    def is_causal_lm(input_names: list[str]) -> bool:
        return INPUT_IDS in input_names and any(_PAST_RE.match(n) for n in input_names)
