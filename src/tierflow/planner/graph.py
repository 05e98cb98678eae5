"""A model as the planner sees it: a DAG of units and the byte size of every tensor between them.

These are plain values; :mod:`tierflow.profiling.graph_builder` builds them from an ONNX model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tierflow.errors import InvalidInputError

Granularity = Literal["auto", "blocks", "layers", "chain", "node"]
GRANULARITIES: tuple[str, ...] = ("auto", "blocks", "layers", "chain", "node")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorInfo(_Frozen):
    """A tensor that may cross a cut."""

    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]
    nbytes: int
    producer: str | None  # unit name; None for a graph input
    consumers: tuple[str, ...]  # units other than the producer that read it
    output: bool = False  # a graph output: it goes back to the device
    resident: bool = False  # stays on the tier that holds it, never sent (an LM's KV cache)

    @property
    def is_float(self) -> bool:
        return self.dtype in ("float32", "float16", "float64", "bfloat16")

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


class Unit(_Frozen):
    """Nodes that run together on one tier."""

    name: str
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]  # boundary tensors it reads
    outputs: tuple[str, ...]  # boundary tensors it writes
    weights: tuple[str, ...]  # initializers it reads (directly or through weight-only nodes)
    weight_bytes: int
    activation_bytes: int  # its boundary inputs + outputs
    macs: int = 0


class UnitGraph(_Frozen):
    """The planner's view of one model at fixed input shapes."""

    model_sha256: str
    granularity: str
    input_shapes: dict[str, tuple[int, ...]]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    units: tuple[Unit, ...]  # in topological order
    tensors: dict[str, TensorInfo]
    weight_sizes: dict[str, int]

    @cached_property
    def index(self) -> dict[str, int]:
        return {u.name: i for i, u in enumerate(self.units)}

    @cached_property
    def node_unit(self) -> dict[str, str]:
        return {node: u.name for u in self.units for node in u.nodes}

    @cached_property
    def preds(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, set[str]] = {u.name: set() for u in self.units}
        for t in self.tensors.values():
            if t.producer is not None:
                for c in t.consumers:
                    out[c].add(t.producer)
        return {k: tuple(sorted(v, key=self.index.__getitem__)) for k, v in out.items()}

    @cached_property
    def succs(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, set[str]] = {u.name: set() for u in self.units}
        for t in self.tensors.values():
            if t.producer is not None:
                out[t.producer].update(t.consumers)
        return {k: tuple(sorted(v, key=self.index.__getitem__)) for k, v in out.items()}

    def unit(self, name: str) -> Unit:
        try:
            return self.units[self.index[name]]
        except KeyError:
            raise InvalidInputError(f"no unit named '{name}'") from None

    def units_between(self, inputs: Iterable[str], outputs: Iterable[str]) -> set[str]:
        """The units a stage computing ``outputs`` from ``inputs`` runs (backwards, stopping at inputs)."""
        have = set(inputs)
        seen: set[str] = set()
        stack = [self.tensors[t].producer for t in outputs if t in self.tensors and t not in have]
        while stack:
            name = stack.pop()
            if name is None or name in seen:
                continue
            seen.add(name)
            for t in self.unit(name).inputs:
                if t not in have:
                    stack.append(self.tensors[t].producer)
        return seen

    def total_weight_bytes(self) -> int:
        return sum(self.weight_sizes.values())

    def describe(self) -> str:
        return f"{len(self.units)} units ({self.granularity}), {len(self.tensors)} boundary tensors"
