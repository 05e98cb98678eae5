"""A causal LM cut by layer range: where its layers meet, and the sub-graph of each span.

A *span* ``[a, b)`` of an ``N``-layer LM in tierflow's ONNX form
(:mod:`tierflow.model.lm_contract`) runs layers ``a .. b-1``:

* it reads the hidden state entering layer ``a`` (for ``a == 0``: the token ids, through the
  embedding), the token ids and positions of the step, and the past KV of its own layers;
* it writes the hidden state leaving layer ``b-1`` (for ``b == N``: the logits, through the
  final norm and head) and the present KV of its own layers.

The hidden state between layer ``i-1`` and ``i`` is found from the graph itself, so any model
in the form works (the bundled demo-lm, exported GPT-2 and Llama, an Optimum export): it is the
last tensor, in graph order, that depends on some earlier layer's past but on no later one, and
from which -- with the step's token ids, positions and mask and the past of layers ``i ..`` only
-- every later layer's present and the logits can be computed. Earlier tensors of layer ``i-1``
may suffice too (the embedding can be recomputed from the token ids), but they would push part
of layer ``i-1`` onto the next tier; later ones (layer ``i``'s norm, its projections) do not
suffice, since the residual stream itself is needed. Found boundaries are cached in the model's metadata by
:func:`annotate` (``tierflow.layer_boundaries``), so a compiled package does not search again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import onnx

from tierflow.errors import InvalidInputError, PlanError, UnsupportedModelError
from tierflow.model import lm_contract as lc
from tierflow.model import metadata as md
from tierflow.model.partition import GraphCutter

STEP_INPUTS = (lc.INPUT_IDS, lc.ATTENTION_MASK, lc.POSITION_IDS)  # what every span may read of a step
# The step inputs a span runner builds itself from the step's shape (batch, past length, step length):
# what is computed from them alone (the attention mask, rotary angles) is the same for every context.
SHAPE_BUILT_INPUTS = frozenset({lc.ATTENTION_MASK, lc.POSITION_IDS})
SHAPE_OPS = frozenset({"Shape", "Size"})
WEIGHT_MIN_ELEMENTS = 1024  # smaller initializers (shape constants) keep their values for shape inference


def weightless(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """``model``'s graph with its weights left out (each large initializer keeps its name, type and
    shape), and those weights by name: the model's own messages, not copies.

    Finding layer boundaries and cutting spans copies and re-infers the graph several times; on the
    skeleton that costs kilobytes where the weights would cost the model's size each time.
    """
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.metadata_props.extend(model.metadata_props)
    skeleton.functions.extend(model.functions)
    graph, bare = model.graph, skeleton.graph
    bare.name = graph.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(bare, field).extend(getattr(graph, field))
    weights: dict[str, onnx.TensorProto] = {}
    for tensor in graph.initializer:
        if math.prod(tensor.dims) < WEIGHT_MIN_ELEMENTS:
            bare.initializer.append(tensor)
            continue
        stub = bare.initializer.add()
        stub.name, stub.data_type = tensor.name, tensor.data_type
        stub.dims.extend(tensor.dims)
        weights[tensor.name] = tensor
    return skeleton, weights


@dataclass(frozen=True)
class StepGraphs:
    """A span's graph in two parts: the *preamble*, which depends on the step's shape alone (batch,
    past length, step length: the attention mask, the rotary angles, the step's positions), and the
    *body*, which reads the preamble's results (``step_tensors``) as inputs.

    Every span of an exported decoder recomputes the preamble (some 45 small nodes in a Llama), so
    a span runner computes it once per step shape and reuses it for every context and every later
    step of that shape. ``preamble`` is None when the span has nothing to set apart.
    """

    body: onnx.ModelProto
    preamble: onnx.ModelProto | None
    step_tensors: tuple[str, ...]


@dataclass(frozen=True)
class Span:
    """Layers ``first .. last`` (inclusive) of an LM: the unit of work a tier holds."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if self.first < 0 or self.last < self.first:
            raise InvalidInputError(f"a layer span needs 0 <= first <= last, got {self.first}-{self.last}")

    @property
    def layers(self) -> range:
        return range(self.first, self.last + 1)

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    @classmethod
    def parse(cls, text: str) -> Span:
        """``"2-4"`` (inclusive) or ``"3"``."""
        parts = text.strip().split("-")
        try:
            if len(parts) == 1:
                return cls(int(parts[0]), int(parts[0]))
            if len(parts) == 2:
                return cls(int(parts[0]), int(parts[1]))
        except ValueError:
            pass
        raise InvalidInputError(f"a layer span is FIRST-LAST (inclusive), e.g. 0-1; got {text!r}")


def check_cover(spans: Sequence[Span], num_layers: int) -> None:
    """Spans in order must cover layers 0 .. num_layers-1 exactly once; a one-line error otherwise."""
    at = 0
    for span in spans:
        if span.first != at:
            what = "overlap" if span.first < at else "leave a gap"
            raise InvalidInputError(
                f"spans {', '.join(map(str, spans))} {what} at layer {min(at, span.first)}: "
                f"they must cover layers 0-{num_layers - 1} in order, each once"
            )
        at = span.last + 1
    if at != num_layers:
        raise InvalidInputError(
            f"spans {', '.join(map(str, spans)) or '(none)'} cover layers 0-{at - 1}; "
            f"the model has {num_layers} (0-{num_layers - 1})"
        )


def _present(layers: range) -> list[str]:
    return [lc.present_name(i, kind) for i in layers for kind in ("key", "value")]


def _past(layers: range) -> list[str]:
    return [lc.past_name(i, kind) for i in layers for kind in ("key", "value")]


class LayeredLM:
    """One causal LM and its layer boundaries; extracts the ONNX graph of any span."""

    def __init__(self, model: onnx.ModelProto) -> None:
        names = [i.name for i in model.graph.input]
        if not lc.LMSignature.is_causal_lm(names):
            raise UnsupportedModelError("only a causal LM (input_ids + past_key_values) can be cut by layer")
        self.model = model
        self._skeleton, self._weights = weightless(model)
        self.cutter = GraphCutter(self._skeleton)
        self.num_layers = lc.layer_count(names)
        self.step_inputs = [n for n in STEP_INPUTS if n in self.cutter.graph_inputs]
        self._cutters: dict[Span, GraphCutter] = {}

    @cached_property
    def boundaries(self) -> list[str]:
        """``boundaries[i-1]`` is the hidden state entering layer ``i`` (for i in 1 .. N-1)."""
        found = md.layer_boundaries(self.model)
        if found is not None and len(found) == self.num_layers - 1:
            return found
        return [self._find_boundary(i) for i in range(1, self.num_layers)]

    def _suffices(self, tensor: str, layer: int) -> bool:
        wanted = [*_present(range(layer, self.num_layers)), lc.LOGITS]
        available = {tensor, *self.step_inputs, *_past(range(layer, self.num_layers))}
        try:  # the tail's own cutter: a shape read of an earlier layer's past is not a dependency
            self._span_cutter(Span(layer, self.num_layers - 1)).needed_inputs(wanted, available)
        except PlanError:
            return False
        return True

    def _find_boundary(self, layer: int) -> str:
        earlier = set(_past(range(layer)))
        later = set(_past(range(layer, self.num_layers)))
        depends = self._graph_input_deps
        for node in reversed(self.model.graph.node):  # the last one: see the module docstring
            for out in node.output:
                deps = depends.get(out, frozenset())
                if out and deps & earlier and not deps & later and self._suffices(out, layer):
                    return str(out)
        raise UnsupportedModelError(f"cannot find the hidden state between layers {layer - 1} and {layer}")

    @cached_property
    def _graph_input_deps(self) -> dict[str, frozenset[str]]:
        """For every tensor, the graph inputs it depends on (the graph lists nodes in topological order)."""
        inputs = set(self.cutter.graph_inputs)
        deps: dict[str, frozenset[str]] = {n: frozenset({n}) for n in inputs}
        for node in self.model.graph.node:
            if node.op_type in SHAPE_OPS:  # reads a shape, not values: the step's length, say
                mine: frozenset[str] = frozenset()
            else:
                mine = frozenset().union(*(deps.get(i, frozenset()) for i in node.input if i))
            for out in node.output:
                deps[out] = mine
        return deps

    def _span_cutter(self, span: Span) -> GraphCutter:
        """A cutter over the model with every shape read of another layer's past moved to this span's.

        Exporters compute the attention mask from the past length of some layer (the last one in
        torch.onnx's GPT-2 and Llama graphs). Every layer's past has the same shape, so a span
        reads that length from its own first layer instead, and needs no other layer's cache.
        """
        cached = self._cutters.get(span)
        if cached is not None:
            return cached
        own = {kind: lc.past_name(span.first, kind) for kind in ("key", "value")}
        foreign = {
            lc.past_name(i, kind): own[kind]
            for i in range(self.num_layers)
            if i not in span.layers
            for kind in ("key", "value")
        }
        if not any(
            n.op_type in SHAPE_OPS and any(i in foreign for i in n.input) for n in self.model.graph.node
        ):
            cutter = self.cutter
        else:
            model = onnx.ModelProto()
            model.CopyFrom(self._skeleton)
            for node in model.graph.node:
                if node.op_type in SHAPE_OPS:
                    for k, name in enumerate(node.input):
                        if name in foreign:
                            node.input[k] = foreign[name]
            cutter = GraphCutter(model)
        self._cutters[span] = cutter
        return cutter

    def span_io(self, span: Span) -> tuple[list[str], list[str]]:
        """What the span's graph reads and writes, before trimming inputs it does not need."""
        if span.last >= self.num_layers:
            raise InvalidInputError(
                f"layer {span.last} does not exist: the model has {self.num_layers} layers"
            )
        hidden_in = [] if span.first == 0 else [self.boundaries[span.first - 1]]
        last = span.last == self.num_layers - 1
        head = [lc.LOGITS] if last else [self.boundaries[span.last]]
        return ([*hidden_in, *self.step_inputs, *_past(span.layers)], [*head, *_present(span.layers)])

    def hidden_in(self, span: Span) -> str | None:
        return None if span.first == 0 else self.boundaries[span.first - 1]

    def hidden_out(self, span: Span) -> str | None:
        return None if span.last == self.num_layers - 1 else self.boundaries[span.last]

    def weight_names(self, span: Span) -> set[str]:
        """The initializers the span's graph reads."""
        inputs, outputs = self.span_io(span)
        cutter = self._span_cutter(span)
        needed = set(cutter.needed_inputs(outputs, inputs))
        return self._initializers_reached(cutter.model, outputs, needed)

    @staticmethod
    def _initializers_reached(model: onnx.ModelProto, outputs: Sequence[str], stop: set[str]) -> set[str]:
        graph = model.graph
        inits = {t.name for t in graph.initializer}
        producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
        seen: set[str] = set()
        found: set[str] = set()
        stack = list(outputs)
        while stack:
            name = stack.pop()
            if name in seen or not name or name in stop:
                continue
            seen.add(name)
            if name in inits:
                found.add(name)
            elif name in producer:
                node = graph.node[producer[name]]
                stack.extend(node.input)
                for attr in node.attribute:  # subgraphs (If/Loop) read outer initializers too
                    for g in [attr.g, *attr.graphs]:
                        stack.extend(i for n in g.node for i in n.input)
        return found

    def hidden_size(self) -> int:
        """The width of the hidden state between layers (its last dimension)."""
        if self.num_layers < 2:
            raise UnsupportedModelError("a one-layer model has no hidden state between layers")
        name = self.boundaries[0]
        for value in [*self.cutter.model.graph.value_info, *self.cutter.model.graph.output]:
            if value.name == name:
                dims = value.type.tensor_type.shape.dim
                if dims and dims[-1].HasField("dim_value"):
                    return int(dims[-1].dim_value)
        raise UnsupportedModelError(f"cannot tell the width of the hidden state {name}")

    def extract_step_graphs(self, span: Span) -> StepGraphs:
        """``span``'s graph (inputs it does not need are dropped) as a preamble and a body
        (:class:`StepGraphs`), each with its own weights only."""
        inputs, outputs = self.span_io(span)
        cutter = self._span_cutter(span)
        whole = cutter.extract(inputs, outputs)
        found = _step_tensors(whole.graph)
        typed = {v.name for v in cutter.model.graph.value_info if v.type.tensor_type.elem_type}
        if not found or not set(found) <= typed:  # a body input must have a known type
            return StepGraphs(self._weighted(whole), None, ())
        body = cutter.extract([*inputs, *found], outputs)
        preamble = cutter.extract(inputs, found)
        return StepGraphs(self._weighted(body), self._weighted(preamble), tuple(found))

    def _weighted(self, stage: onnx.ModelProto) -> onnx.ModelProto:
        """``stage`` (cut from the weightless skeleton) with its initializers' values put back."""
        for tensor in stage.graph.initializer:
            weight = self._weights.get(tensor.name)
            if weight is not None:
                tensor.CopyFrom(weight)
        return stage


def _step_tensors(graph: onnx.GraphProto) -> list[str]:
    """The tensors of a span's graph that depend on the step's shape alone and that the rest reads.

    A node belongs to the preamble when it reads only the shape-built step inputs (mask,
    positions), initializers, other preamble tensors, or -- for a shape read -- any graph input
    (every input's shape follows from the step's). Tensors of constants alone stay in the body
    (ONNX Runtime folds them). Nodes with sub-graphs stay in the body too.
    """
    graph_inputs = {i.name for i in graph.input}
    initializers = {t.name for t in graph.initializer}
    shape_built = SHAPE_BUILT_INPUTS & graph_inputs
    derived: dict[str, bool] = {}  # preamble tensor -> whether it depends on the step at all
    preamble: set[int] = set()
    for index, node in enumerate(graph.node):
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        reads = [i for i in node.input if i]
        if node.op_type in SHAPE_OPS:
            fits = all(i in graph_inputs or i in derived for i in reads)
            steps = True
        else:
            fits = all(i in shape_built or i in initializers or i in derived for i in reads)
            steps = any(i in shape_built or derived.get(i, False) for i in reads)
        if fits:
            preamble.add(index)
            derived.update((out, steps) for out in node.output if out)
    read_after = {i for index, node in enumerate(graph.node) if index not in preamble for i in node.input}
    read_after.update(o.name for o in graph.output)
    return sorted(name for name, steps in derived.items() if steps and name in read_after)


def annotate(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its layer boundaries recorded in metadata (found once, read by every tier)."""
    layered = LayeredLM(model)
    found = layered.boundaries
    md.write_metadata(model, layer_boundaries=found)
    return model


@dataclass(frozen=True)
class LayerCosts:
    """Bytes of one LM by layer: what the span planner needs to know what fits where."""

    layer_weight_bytes: tuple[int, ...]
    embedding_bytes: int  # read only by the first span
    head_bytes: int  # read only by the last span
    kv_bytes_per_token: int  # per layer: one token's key + value
    hidden_bytes_per_token: int


def layer_costs(layered: LayeredLM) -> LayerCosts:
    """Weights per layer, from the initializers each one-layer span reads.

    The first and last one-layer spans also read the embedding and the head. A middle layer
    reads only its own weights, and the layers of a decoder are alike, so the first and last
    layers are taken to weigh what the middle ones do and the rest of their spans is the
    embedding and the head (with fewer than three layers there is no middle one: the spans
    are split evenly and embedding and head count as 0).
    """
    model = layered.model
    size = {t.name: _tensor_bytes(t) for t in model.graph.initializer}
    n = layered.num_layers
    totals = [sum(size[w] for w in layered.weight_names(Span(i, i))) for i in range(n)]
    if n >= 3:
        middle = sorted(totals[1:-1])[len(totals[1:-1]) // 2]
        per_layer = (middle, *totals[1:-1], middle)
        embedding, head = max(totals[0] - middle, 0), max(totals[-1] - middle, 0)
    else:
        per_layer, embedding, head = tuple(totals), 0, 0
    first = {i.name: i for i in model.graph.input}[lc.past_name(0, "key")].type.tensor_type
    dims = first.shape.dim
    item = 2 if first.elem_type == onnx.TensorProto.FLOAT16 else 4
    kv = 2 * int(dims[1].dim_value) * int(dims[3].dim_value) * item
    return LayerCosts(per_layer, embedding, head, kv, layered.hidden_size() * 4)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    import numpy as np
    from onnx import helper

    try:
        item = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError):
        item = 4
    return int(math.prod(tensor.dims)) * item
