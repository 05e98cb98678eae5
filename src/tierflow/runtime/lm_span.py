"""Running one layer span of a causal LM on ONNX Runtime, with the KV cache of its own layers.

A tier holding layers ``a .. b`` runs :class:`SpanRunner.step`: the step's token ids (and, after
the first span, the hidden state entering layer ``a``) plus its layers' past KV in; the hidden
state leaving layer ``b`` (or, on the last span, the logits) plus the new KV out. The attention
mask and positions are rebuilt here from the past length, so they never cross a link.

What a span computes from the step's shape alone (the mask, the rotary angles: its *preamble*,
:class:`~tierflow.model.lm_layers.StepGraphs`) is the same for every context at a given past length,
so a decode step's preamble is computed once per past length and kept (:class:`StepTensorCache`):
every span of a split would otherwise recompute what the unsplit model computes once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from tierflow.errors import InvalidInputError
from tierflow.model import lm_contract as lc
from tierflow.model.lm_layers import LayeredLM, Span
from tierflow.runtime.session import SessionOptions, open_session

KVPair = tuple[np.ndarray, np.ndarray]
CACHED_STEP_TOKENS = 1  # steps of this many tokens (decode steps) keep their preamble's results
STEP_CACHE_BYTES = 8 * 2**20  # per span: the preamble results kept, the least recently used dropped first
StepShape = tuple[int, int, int]  # batch, past length, step length


class StepTensorCache:
    """A span's preamble results by step shape, at most ``capacity_bytes``, the least recently used
    dropped first; thread-safe. The arrays are read-only: every step of that shape feeds the same ones
    to ONNX Runtime. They hold nothing of any context (a mask of ones, angles of positions).
    """

    def __init__(self, capacity_bytes: int = STEP_CACHE_BYTES) -> None:
        self.capacity_bytes = capacity_bytes
        self._found: OrderedDict[StepShape, dict[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self.held_bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, shape: StepShape) -> dict[str, np.ndarray] | None:
        with self._lock:
            found = self._found.get(shape)
            if found is None:
                self.misses += 1
                return None
            self._found.move_to_end(shape)
            self.hits += 1
            return found

    def put(self, shape: StepShape, tensors: dict[str, np.ndarray]) -> None:
        for array in tensors.values():
            array.flags.writeable = False
        with self._lock:
            old = self._found.pop(shape, None)
            self.held_bytes += _nbytes(tensors) - (0 if old is None else _nbytes(old))
            self._found[shape] = tensors
            while self.held_bytes > self.capacity_bytes and self._found:
                self.held_bytes -= _nbytes(self._found.popitem(last=False)[1])


def _nbytes(tensors: dict[str, np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in tensors.values())


@dataclass(frozen=True)
class _OpenSpan:
    """A span's sessions (the body, and the preamble whose results it reads, if it has one) and the
    names a step feeds and fetches, worked out once."""

    body: ort.InferenceSession
    body_inputs: list[str]
    preamble: ort.InferenceSession | None
    preamble_inputs: list[str]
    step_tensors: list[str]
    cache: StepTensorCache
    hidden_in: str | None
    past: list[tuple[str, str]]  # per layer: its past key's and value's names
    wanted: list[str]  # the hidden state leaving the span (or the logits), then every present


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
        self._sessions: dict[Span, _OpenSpan] = {}
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

    def session(self, span: Span) -> _OpenSpan:
        with self._lock:
            found = self._sessions.get(span)
            if found is None:
                graphs = self.layered.extract_step_graphs(span)
                body = open_session(graphs.body.SerializeToString(), self.options)
                preamble = (
                    None
                    if graphs.preamble is None
                    else open_session(graphs.preamble.SerializeToString(), self.options)
                )
                out = self.layered.hidden_out(span) or lc.LOGITS
                found = self._sessions[span] = _OpenSpan(
                    body,
                    [i.name for i in body.get_inputs()],
                    preamble,
                    [] if preamble is None else [i.name for i in preamble.get_inputs()],
                    list(graphs.step_tensors),
                    StepTensorCache(),
                    self.layered.hidden_in(span),
                    [(lc.past_name(i, "key"), lc.past_name(i, "value")) for i in span.layers],
                    [out] + [lc.present_name(i, kind) for i in span.layers for kind in ("key", "value")],
                )
        return found

    def step_cache(self, span: Span) -> StepTensorCache:
        """``span``'s kept preamble results (opening the span if it is not open)."""
        return self.session(span).cache

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
        opened = self.session(span)
        batch, seq = ids.shape
        past_len = past[0][0].shape[2]
        available: dict[str, np.ndarray] = {lc.INPUT_IDS: ids}
        if opened.hidden_in is not None:
            if hidden is None:
                raise InvalidInputError(f"span {span} starts after layer 0: it needs the hidden state")
            available[opened.hidden_in] = hidden
        for (key_name, value_name), (k, v) in zip(opened.past, past, strict=True):
            available[key_name] = k
            available[value_name] = v
        try:
            if opened.preamble is not None:
                available.update(self._step_tensors(opened, available, (batch, past_len, seq)))
            else:
                self._shape_built(available, batch, past_len, seq)
            values = opened.body.run(opened.wanted, {name: available[name] for name in opened.body_inputs})
        except KeyError as exc:  # the model reads a step input this runner does not build
            raise InvalidInputError(f"span {span} needs an input this runner does not have: {exc}") from exc
        except Exception as exc:  # ORT reports shape/type mismatches as opaque runtime errors
            raise InvalidInputError(
                f"span {span} rejected its inputs: {' '.join(str(exc).split())[:300]}"
            ) from exc
        present = [(values[1 + 2 * j], values[2 + 2 * j]) for j in range(len(span.layers))]
        last = opened.wanted[0] == lc.LOGITS
        return SpanOutput(
            hidden=None if last else values[0], logits=values[0] if last else None, present=present
        )

    def _step_tensors(
        self, opened: _OpenSpan, available: dict[str, np.ndarray], shape: StepShape
    ) -> dict[str, np.ndarray]:
        """The preamble's results for a step of ``shape``: kept ones for a decode step, else computed."""
        keep = shape[2] <= CACHED_STEP_TOKENS
        found = opened.cache.get(shape) if keep else None
        if found is None:
            assert opened.preamble is not None
            feeds = dict(available)
            self._shape_built(feeds, *shape)
            values = opened.preamble.run(
                opened.step_tensors, {name: feeds[name] for name in opened.preamble_inputs}
            )
            found = dict(zip(opened.step_tensors, values, strict=True))
            if keep:
                opened.cache.put(shape, found)
        return found

    @staticmethod
    def _shape_built(into: dict[str, np.ndarray], batch: int, past_len: int, seq: int) -> None:
        """The step inputs built from the step's shape: a mask of ones and the step's positions."""
        into[lc.ATTENTION_MASK] = np.ones((batch, past_len + seq), np.int64)
        positions = np.arange(past_len, past_len + seq, dtype=np.int64)
        into[lc.POSITION_IDS] = np.broadcast_to(positions, (batch, seq)).copy()
