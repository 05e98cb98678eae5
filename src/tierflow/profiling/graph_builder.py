"""Builds the planner's :class:`~tierflow.planner.graph.UnitGraph` from an ONNX model.

A *unit* is a set of ONNX nodes that always runs on one tier. Units come from
the model at one of these granularities:

* ``node``   -- every node is a unit.
* ``chain``  -- a heavy node (Conv, Gemm, MatMul, ...) and the light nodes that
  follow it in a chain (BatchNorm, ReLU, Add, ...): a Neurosurgeon-style layer.
* ``layers`` -- nodes grouped by the first part of their name (``/blocks.3/attn/MatMul``
  -> ``blocks.3``), as exporters from PyTorch name them; then ``chain`` for the rest.
* ``blocks`` -- the model's ``tierflow.blocks`` metadata: a JSON list of block output
  tensors in topological order; a node belongs to the first block whose output it
  helps compute, nodes after the last block form a final unit.
* ``auto``   -- ``blocks`` if the metadata is there, else ``layers`` if the names give
  at least three groups, else ``chain``.

Nodes that compute only from weights (``Constant``, ``Identity`` of an initializer)
are not units: like weights they exist on every tier, and a stage recomputes them.
Nodes that no output needs are dropped.

Sizes come from ONNX shape inference at concrete input shapes; tensors inference
cannot size are measured by running the model once in ONNX Runtime. Only
*boundary* tensors (graph inputs and outputs, and tensors passed between units)
are kept: nothing else can cross a cut.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import networkx as nx
import numpy as np
import onnx
from onnx import helper

from tierflow.errors import InvalidInputError, InvalidModelError
from tierflow.model import lm_contract as lc
from tierflow.model import metadata as md
from tierflow.model.feeds import random_feeds, resolve_shape
from tierflow.model.onnx_build import node_macs
from tierflow.planner.graph import GRANULARITIES, Granularity, TensorInfo, Unit, UnitGraph

LM_SEQ_DEFAULT = 32  # prompt length planned for when a causal LM's sequence length is not given
HEAVY_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "Attention", "MultiHeadAttention", "LSTM", "GRU", "RNN", "Einsum",
})



# --- input shapes -------------------------------------------------------------------------


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def default_input_shapes(
    model: onnx.ModelProto, dims: Mapping[str, int] | None = None
) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes to plan for.

    Symbolic dimensions take, in order: ``dims`` (by symbol name), the model's
    ``tierflow.dims`` metadata, then the defaults of :mod:`tierflow.model.feeds`. A causal
    LM is planned for a prompt (prefill): ``seq`` = 32 new tokens and ``past`` = 0
    unless ``dims`` says otherwise.
    """
    given = dict(dims or {})
    inputs = graph_inputs(model)
    if lc.LMSignature.is_causal_lm([i.name for i in inputs]):
        return _lm_shapes(inputs, given)
    sizes = {**md.dims(model), **given}
    return {value.name: resolve_shape(_dims(value), sizes) for value in inputs}


def _lm_shapes(inputs: list[onnx.ValueInfoProto], dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    batch = dims.get("batch", 1)
    seq = dims.get("seq", dims.get("sequence_length", LM_SEQ_DEFAULT))
    past = dims.get("past", dims.get("past_sequence_length", 0))
    shapes: dict[str, tuple[int, ...]] = {}
    for value in inputs:
        d = _dims(value)
        if value.name in (lc.INPUT_IDS, lc.POSITION_IDS):
            shapes[value.name] = (batch, seq)
        elif value.name == lc.ATTENTION_MASK:
            shapes[value.name] = (batch, past + seq)
        elif len(d) == 4 and isinstance(d[1], int) and isinstance(d[3], int):
            shapes[value.name] = (batch, d[1], past, d[3])
        else:
            raise InvalidModelError(f"cannot work out a shape for LM input {value.name}")
    return shapes


def example_feeds(graph: UnitGraph, specs: Mapping[str, str], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs at the graph's shapes (``specs``: input -> dtype), by :mod:`tierflow.model.feeds`."""
    shapes = graph.input_shapes
    return random_feeds(((name, np.dtype(specs[name]), shape) for name, shape in shapes.items()), seed)


def input_dtypes(model: onnx.ModelProto) -> dict[str, str]:
    return {v.name: _np_dtype(v.type.tensor_type.elem_type) for v in graph_inputs(model)}


# --- building ----------------------------------------------------------------------------


def _np_dtype(elem_type: int) -> str:
    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))
    except (KeyError, TypeError, ValueError):
        return "float32"


def _with_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for value in fixed.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            if len(dims) != len(shapes[value.name]):
                raise InvalidInputError(
                    f"input {value.name} has rank {len(dims)}, got shape {list(shapes[value.name])}"
                )
            for dim, size in zip(dims, shapes[value.name], strict=True):
                dim.Clear()
                dim.dim_value = int(size)
    for value in fixed.graph.output:
        value.type.tensor_type.ClearField("shape")
    try:
        return onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:  # inference is best effort; sizes it misses are measured by a run
        return fixed


def _typed(model: onnx.ModelProto) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    out: dict[str, tuple[str, tuple[int, ...] | None]] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tt = value.type.tensor_type
        dtype = _np_dtype(tt.elem_type) if tt.elem_type else "float32"
        shape: tuple[int, ...] | None = None
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shape = tuple(int(d.dim_value) for d in tt.shape.dim)
        out[value.name] = (dtype, shape)
    return out


def _measure_sizes(
    model: onnx.ModelProto, names: list[str], feeds: Mapping[str, np.ndarray]
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Shapes and dtypes of ``names`` from one ONNX Runtime run (for what inference could not size)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            vi = onnx.ValueInfoProto()
            vi.name = name
            probe.graph.output.append(vi)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
        values = session.run(names, dict(feeds))
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise InvalidModelError(f"cannot size the model's tensors: {reason}") from exc
    return {n: (str(v.dtype), tuple(int(s) for s in v.shape)) for n, v in zip(names, values, strict=True)}


class GroupKind(Enum):
    """Where a unit's nodes were grouped from."""

    BLOCK = "block"  # the k-th tensor of the model's block metadata (or what follows the last)
    NAME = "name"  # a shared first part of the node names (``/blocks.3/attn/MatMul`` -> ``blocks.3``)
    NODE = "node"  # a single node (by index), possibly with the light chain after it


@dataclass(frozen=True)
class Group:
    """A group of nodes that becomes one unit: its kind and its key (block index, name part or node index)."""

    kind: GroupKind
    key: int | str

    @classmethod
    def node(cls, index: int) -> Group:
        return cls(GroupKind.NODE, index)


class _Nodes:
    """Node-level facts: ids, producers, weight-only nodes, live nodes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model = model
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.ids: list[str] = []
        used: Counter[str] = Counter()
        for i, node in enumerate(self.nodes):
            base = node.name or f"{node.op_type}_{i}"
            used[base] += 1
            self.ids.append(base if used[base] == 1 else f"{base}#{i}")
        self.producer: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = i
        # weight-only nodes: every input is an initializer or another weight-only tensor
        self.const: set[str] = set(self.inits)
        self.const_nodes: set[int] = set()
        for i, node in enumerate(self.nodes):
            ins = [x for x in node.input if x]
            if all(x in self.const for x in ins) and node.op_type not in ("RandomNormal", "RandomUniform"):
                self.const_nodes.add(i)
                self.const.update(o for o in node.output if o)
        self.outputs = [o.name for o in g.output]
        live: set[int] = set()
        stack = [self.producer[o] for o in self.outputs if o in self.producer]
        while stack:
            i = stack.pop()
            if i in live or i in self.const_nodes:
                continue
            live.add(i)
            stack.extend(self.producer[x] for x in self.nodes[i].input if x in self.producer)
        self.live = sorted(live)

    def real_inputs(self, i: int) -> list[str]:
        return [x for x in self.nodes[i].input if x and x not in self.const]

    def weights_of(self, i: int) -> set[str]:
        """Initializers node ``i`` reads, directly or through weight-only nodes."""
        out: set[str] = set()
        stack = [x for x in self.nodes[i].input if x in self.const]
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in self.inits:
                out.add(name)
            elif name in self.producer:
                stack.extend(x for x in self.nodes[self.producer[name]].input if x)
        return out

    def preds(self, i: int) -> set[int]:
        return {self.producer[x] for x in self.real_inputs(i) if x in self.producer}


def _init_bytes(init: onnx.TensorProto) -> int:
    itemsize = np.dtype(_np_dtype(init.data_type)).itemsize
    return int(math.prod(init.dims)) * int(itemsize)


def _first_part(name: str) -> str | None:
    parts = [p for p in name.split("/") if p]
    return parts[0] if len(parts) >= 2 else None


def _groups_by_blocks(nodes: _Nodes, blocks: list[str]) -> dict[int, Group] | None:
    order: list[str] = [b for b in blocks if b in nodes.producer]
    if not order:
        return None
    live = set(nodes.live)
    group: dict[int, Group] = {}
    for k, tensor in enumerate(order):
        stack = [nodes.producer[tensor]]
        while stack:
            i = stack.pop()
            if i in group or i not in live:
                continue
            group[i] = Group(GroupKind.BLOCK, k)
            stack.extend(nodes.preds(i))
    for i in nodes.live:
        group.setdefault(i, Group(GroupKind.BLOCK, len(order)))
    return group


def _groups_by_names(nodes: _Nodes) -> dict[int, Group]:
    return {i: (Group(GroupKind.NAME, part) if (part := _first_part(nodes.nodes[i].name)) else Group.node(i))
            for i in nodes.live}


def _contract_light_chains(nodes: _Nodes, group: dict[int, Group]) -> dict[int, Group]:
    """Merge each light single-node group into the group before it when that edge is a plain chain.

    A node joins its predecessor's group when it is not a heavy op, reads from that one
    group only, and is the only node outside the group that reads the group's results:
    cutting there would send the same tensor one step later, so nothing is lost.
    """
    group = dict(group)
    members: dict[Group, set[int]] = defaultdict(set)
    for i, g in group.items():
        members[g].add(i)
    succ: dict[int, set[int]] = defaultdict(set)
    for i in group:
        for p in nodes.preds(i):
            if p in group:
                succ[p].add(i)
    external = {g: set().union(*(succ[m] for m in ms)) - ms for g, ms in members.items()}
    for i in sorted(group):  # ONNX graphs list nodes in topological order
        g = group[i]
        if g.kind is not GroupKind.NODE or len(members[g]) != 1 or nodes.nodes[i].op_type in HEAVY_OPS:
            continue
        pred_groups = {group[q] for q in nodes.preds(i) if q in group}
        if len(pred_groups) != 1:
            continue
        (before,) = pred_groups
        if external[before] != {i}:
            continue
        members[before].add(i)
        group[i] = before
        external[before] = external.pop(g)
        del members[g]
    return group


def _quotient(nodes: _Nodes, group: dict[int, Group]) -> nx.DiGraph:
    q = nx.DiGraph()
    q.add_nodes_from(set(group.values()))
    for i in group:
        for p in nodes.preds(i):
            if p in group and group[p] != group[i]:
                q.add_edge(group[p], group[i])
    return q


def _unit_names(nodes: _Nodes, group: dict[int, Group], blocks: list[str]) -> dict[Group, str]:
    """Readable, unique names for groups: a shared first name part, a block tensor, or a node id."""
    members: dict[Group, list[int]] = defaultdict(list)
    for i, g in group.items():
        members[g].append(i)
    names: dict[Group, str] = {}
    taken: Counter[str] = Counter()
    for g, idx in sorted(members.items(), key=lambda kv: min(kv[1])):
        parts = {_first_part(nodes.nodes[i].name) for i in idx}
        if g.kind is GroupKind.NAME:
            name = str(g.key)
        elif g.kind is GroupKind.BLOCK and len(parts) == 1 and None not in parts:
            name = str(next(iter(parts)))
        elif g.kind is GroupKind.BLOCK and int(g.key) < len(blocks):
            tensor = blocks[int(g.key)]
            name = tensor[:-4] if tensor.endswith("/out") else tensor
        else:
            name = nodes.ids[min(idx)]
        taken[name] += 1
        names[g] = name if taken[name] == 1 else f"{name}~{taken[name]}"
    return names


def build_unit_graph(
    model: onnx.ModelProto,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
    granularity: Granularity | str = "auto",
    resident: Iterable[str] | None = None,
) -> UnitGraph:
    """The unit graph of ``model`` at ``input_shapes`` (default: :func:`default_input_shapes`).

    ``resident`` names graph outputs that stay on the tier computing them; by default
    a causal LM's ``present.*`` (its KV cache, kept by the tier that holds those layers).
    """
    if granularity not in GRANULARITIES:
        raise InvalidInputError(f"unknown granularity '{granularity}' (one of: {', '.join(GRANULARITIES)})")
    sha = hashlib.sha256(model.SerializeToString()).hexdigest()
    given = input_shapes or default_input_shapes(model, dims)
    shapes = {k: tuple(int(x) for x in v) for k, v in given.items()}
    dtypes = input_dtypes(model)
    unknown = sorted(set(shapes) - set(dtypes))
    if unknown:
        raise InvalidInputError(f"the model has no input named '{unknown[0]}'")
    missing = sorted(set(dtypes) - set(shapes))
    if missing:
        raise InvalidInputError(f"no shape given for input '{missing[0]}'")
    nodes = _Nodes(model)
    if not nodes.live:
        raise InvalidModelError("the model computes nothing: no node leads to an output")
    blocks = md.blocks(model) or []

    group = _choose_groups(nodes, granularity, blocks)
    q = _quotient(nodes, group)
    if not nx.is_directed_acyclic_graph(q):  # only name grouping can do this; blocks and chains cannot
        group = _contract_light_chains(nodes, {i: Group.node(i) for i in nodes.live})
        q = _quotient(nodes, group)
        granularity = "chain"
    first = {g: min(i for i, gg in group.items() if gg == g) for g in set(group.values())}
    order = list(nx.lexicographical_topological_sort(q, key=lambda g: first[g]))
    names = _unit_names(nodes, group, blocks)

    consumers = _consumers(nodes, group)
    boundary = [x for x in dict.fromkeys([*shapes, *consumers, *nodes.outputs]) if x not in nodes.const]
    resident_set = _resident_outputs(resident, dtypes, nodes)
    tensors = _tensor_infos(model, nodes, shapes, dtypes, boundary, resident_set)
    tensors = {x: t.model_copy(update={
        "producer": names[group[nodes.producer[x]]] if x in nodes.producer else None,
        "consumers": tuple(sorted(names[g] for g in consumers.get(x, ()))),
    }) for x, t in tensors.items()}
    weight_sizes = {n: _init_bytes(t) for n, t in nodes.inits.items()}
    units = _units(model, nodes, group, [names[g] for g in order], order, tensors, shapes, weight_sizes)
    return UnitGraph(
        model_sha256=sha,
        granularity=granularity,
        input_shapes=shapes,
        inputs=tuple(shapes),
        outputs=tuple(nodes.outputs),
        units=tuple(units),
        tensors=tensors,
        weight_sizes=weight_sizes,
    )


def _resident_outputs(resident: Iterable[str] | None, dtypes: Mapping[str, str], nodes: _Nodes) -> set[str]:
    """Graph outputs that stay where they are computed: as given, else a causal LM's KV cache."""
    if resident is not None:
        return set(resident)
    if lc.LMSignature.is_causal_lm(list(dtypes)):
        return {o for o in nodes.outputs if o.startswith("present.")}
    return set()


def _consumers(nodes: _Nodes, group: Mapping[int, Group]) -> dict[str, set[Group]]:
    """For each tensor read across a group boundary, the groups that read it."""
    consumers: dict[str, set[Group]] = defaultdict(set)
    for i in nodes.live:
        for x in nodes.real_inputs(i):
            owner = group.get(nodes.producer[x]) if x in nodes.producer else None
            if owner != group[i]:
                consumers[x].add(group[i])
    return consumers


def _tensor_infos(
    model: onnx.ModelProto, nodes: _Nodes, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str],
    boundary: Sequence[str], resident: set[str],
) -> dict[str, TensorInfo]:
    """Dtype, shape and bytes of each boundary tensor (shape inference, else one measuring run).

    Producers and consumers are left empty here; the caller names them by unit.
    """
    typed = _typed(_with_shapes(model, shapes))
    for name, shape in shapes.items():
        typed[name] = (dtypes[name], shape)
    unsized = [x for x in boundary if typed.get(x, ("", None))[1] is None]
    if unsized:
        feeds = random_feeds((n, np.dtype(dtypes[n]), s) for n, s in shapes.items())
        typed.update(_measure_sizes(model, unsized, feeds))
    graph_outputs = set(nodes.outputs)
    tensors: dict[str, TensorInfo] = {}
    for x in boundary:
        dtype, sized = typed[x]
        assert sized is not None  # sized by inference or by the run above
        shape = sized
        tensors[x] = TensorInfo(
            name=x, dtype=dtype, shape=shape, nbytes=math.prod(shape) * np.dtype(dtype).itemsize,
            producer=None, consumers=(), output=x in graph_outputs, resident=x in resident,
        )
    return tensors


def _units(
    model: onnx.ModelProto, nodes: _Nodes, group: Mapping[int, Group], names: Sequence[str],
    order: Sequence[Group], tensors: Mapping[str, TensorInfo], shapes: Mapping[str, tuple[int, ...]],
    weight_sizes: Mapping[str, int],
) -> list[Unit]:
    """One :class:`Unit` per group, in ``order`` (``names[k]`` names ``order[k]``)."""
    try:
        macs = node_macs(model, shapes)
    except Exception:  # MACs are informative only; some graphs defeat static counting
        macs = {}
    members: dict[Group, list[int]] = defaultdict(list)
    for i, g in group.items():
        members[g].append(i)
    units: list[Unit] = []
    for g, name in zip(order, names, strict=True):
        idx = sorted(members[g])
        ins = [t for t in tensors.values() if name in t.consumers]
        outs = [t for t in tensors.values() if t.producer == name]
        weights: set[str] = set()
        for i in idx:
            weights |= nodes.weights_of(i)
        units.append(Unit(
            name=name,
            nodes=tuple(nodes.ids[i] for i in idx),
            inputs=tuple(t.name for t in ins),
            outputs=tuple(t.name for t in outs),
            weights=tuple(sorted(weights)),
            weight_bytes=sum(weight_sizes[w] for w in weights),
            activation_bytes=sum(t.nbytes for t in ins) + sum(t.nbytes for t in outs),
            macs=sum(macs.get(nodes.nodes[i].name, 0) for i in idx),
        ))
    return units


def _choose_groups(nodes: _Nodes, granularity: str, blocks: list[str]) -> dict[int, Group]:
    if granularity in ("auto", "blocks") and blocks:
        by_blocks = _groups_by_blocks(nodes, blocks)
        if by_blocks is not None:
            return by_blocks
    if granularity == "blocks":
        raise InvalidModelError(f"the model has no usable {md.BLOCKS} metadata; try --granularity layers")
    if granularity == "node":
        return {i: Group.node(i) for i in nodes.live}
    singles = {i: Group.node(i) for i in nodes.live}
    if granularity in ("auto", "layers"):
        by_names = _groups_by_names(nodes)
        named = {g for g in by_names.values() if g.kind is GroupKind.NAME}
        if len(named) >= 3 or granularity == "layers":
            return _contract_light_chains(nodes, by_names)
    return _contract_light_chains(nodes, singles)
