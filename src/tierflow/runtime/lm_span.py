"""Running one layer span of a causal LM on ONNX Runtime, with the KV cache of its own layers.

A tier holding layers ``a .. b`` runs :class:`SpanRunner.step`: the step's token ids (and, after
the first span, the hidden state entering layer ``a``) plus its layers' past KV in; the hidden
state leaving layer ``b`` (or, on the last span, the logits) plus the new KV out. The attention
mask and positions are rebuilt here from the past length, so they never cross a link.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from tierflow.errors import InvalidInputError
from tierflow.model import lm_contract as lc
from tierflow.model.lm_layers import LayeredLM, Span
from tierflow.runtime.session import SessionOptions, open_session

KVPair = tuple[np.ndarray, np.ndarray]


@dataclass
class SpanOutput:
    """What one step of a span gives: the next hidden state or the logits, and its layers' new KV."""

    hidden: np.ndarray | None  # [batch, seq, d] leaving the span; None on the last span
    logits: np.ndarray | None  # [batch, seq, vocab] on the last span
    present: list[KVPair]  # one (key, value) per layer of the span, past + this step


class SpanRunner:
    """Runs any span of one LM; each span's graph is extracted and opened once."""

    def __init__(self, model: onnx.ModelProto, options: SessionOptions | None = None) -> None:
        self.layered = LayeredLM(model)
        self.options = options or SessionOptions()
        self._sessions: dict[Span, tuple[ort.InferenceSession, list[str]]] = {}
        self._lock = threading.Lock()
        sig_inputs = {i.name: i for i in model.graph.input}
        first = sig_inputs[lc.past_name(0, "key")].type.tensor_type
        dims = first.shape.dim
        self.kv_heads = int(dims[1].dim_value)
        self.head_dim = int(dims[3].dim_value)
        self.kv_dtype = np.float16 if first.elem_type == onnx.TensorProto.FLOAT16 else np.float32

    @property
    def num_layers(self) -> int:
        return self.layered.num_layers

    def session(self, span: Span) -> tuple[ort.InferenceSession, list[str]]:
        with self._lock:
            found = self._sessions.get(span)
            if found is None:
                graph = self.layered.extract(span)
                session = open_session(graph.SerializeToString(), self.options)
                found = self._sessions[span] = (session, [i.name for i in session.get_inputs()])
        return found

    def is_open(self, span: Span) -> bool:
        with self._lock:
            return span in self._sessions

    def close(self, span: Span) -> None:
        """Drop ``span``'s session (its weights); it reopens on the next step that names it."""
        with self._lock:
            self._sessions.pop(span, None)

    def empty_kv(self, span: Span, batch: int = 1) -> list[KVPair]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return [(np.zeros(shape, self.kv_dtype), np.zeros(shape, self.kv_dtype)) for _ in span.layers]

    def step(
        self, span: Span, ids: np.ndarray, past: list[KVPair], hidden: np.ndarray | None = None
    ) -> SpanOutput:
        """Run ``ids`` [batch, seq] (and ``hidden``, entering the span) after ``past`` for its layers."""
        if ids.ndim != 2 or ids.dtype != np.int64:
            raise InvalidInputError(f"input_ids must be int64 [batch, seq], got {ids.dtype} {ids.shape}")
        if len(past) != len(span.layers):
            raise InvalidInputError(f"span {span} needs the KV of {len(span.layers)} layers, got {len(past)}")
        session, names = self.session(span)
        batch, seq = ids.shape
        past_len = past[0][0].shape[2]
        feeds: dict[str, np.ndarray] = {}
        available: dict[str, np.ndarray] = {lc.INPUT_IDS: ids}
        if lc.ATTENTION_MASK in names:
            available[lc.ATTENTION_MASK] = np.ones((batch, past_len + seq), np.int64)
        if lc.POSITION_IDS in names:
            positions = np.arange(past_len, past_len + seq, dtype=np.int64)
            available[lc.POSITION_IDS] = np.broadcast_to(positions, (batch, seq)).copy()
        hidden_name = self.layered.hidden_in(span)
        if hidden_name is not None:
            if hidden is None:
                raise InvalidInputError(f"span {span} starts after layer 0: it needs the hidden state")
            available[hidden_name] = hidden
        for layer, (k, v) in zip(span.layers, past, strict=True):
            available[lc.past_name(layer, "key")] = k
            available[lc.past_name(layer, "value")] = v
        for name in names:
            feeds[name] = available[name]
        out_name = self.layered.hidden_out(span) or lc.LOGITS
        wanted = [out_name] + [lc.present_name(i, kind) for i in span.layers for kind in ("key", "value")]
        try:
            values = session.run(wanted, feeds)
        except Exception as exc:  # ORT reports shape/type mismatches as opaque runtime errors
            raise InvalidInputError(
                f"span {span} rejected its inputs: {' '.join(str(exc).split())[:300]}"
            ) from exc
        present = [(values[1 + 2 * j], values[2 + 2 * j]) for j in range(len(span.layers))]
        last = out_name == lc.LOGITS
        return SpanOutput(
            hidden=None if last else values[0], logits=values[0] if last else None, present=present
        )
