"""Cutting an ONNX graph into stages.

A stage is the sub-graph that computes some tensors (``outputs``) from
others (``inputs``). Cuts may fall anywhere in a general graph (branches,
skip connections): every tensor a stage needs from before the cut is one of
its inputs, so what crosses between tiers is exactly the stage's inputs.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
import onnx.utils

from tierflow.errors import PlanError


class GraphCutter:
    """Extracts stages from one model; shape inference runs once, here."""

    def __init__(self, model: onnx.ModelProto) -> None:
        try:
            self.model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # shape inference is best effort; extraction still works without it
            self.model = model
        graph = self.model.graph
        self._initializers = {t.name for t in graph.initializer}
        self.graph_inputs = [i.name for i in graph.input if i.name not in self._initializers]
        self.graph_outputs = [o.name for o in graph.output]
        self._producer: dict[str, int] = {}
        for index, node in enumerate(graph.node):
            for name in node.output:
                if name:
                    self._producer[name] = index
        self._known = set(self._producer) | set(self.graph_inputs) | self._initializers
        self._extractor = onnx.utils.Extractor(self.model)
        self._add_missing_value_infos()

    def _add_missing_value_infos(self) -> None:
        # Extractor needs a value_info for every tensor that becomes a stage input or
        # output; tensors whose type inference could not work out get an untyped entry.
        for name in self._producer:
            if name not in self._extractor.value_infos:
                vi = onnx.ValueInfoProto()
                vi.name = name
                self._extractor.value_infos[name] = vi

    def needed_inputs(self, outputs: Iterable[str], available: Iterable[str]) -> list[str]:
        """The tensors among ``available`` (or graph inputs) needed to compute ``outputs``.

        Raises PlanError if ``outputs`` cannot be computed from ``available``.
        """
        have = set(available)
        needed: set[str] = set()
        visited: set[str] = set()
        stack = list(outputs)
        for name in stack:
            if name not in self._known:
                raise PlanError(f"tensor '{name}' does not exist in the model")
        while stack:
            name = stack.pop()
            if name in visited or not name:
                continue
            visited.add(name)
            if name in have:
                needed.add(name)
                continue
            if name in self._initializers:
                continue
            if name not in self._producer:
                raise PlanError(f"stage needs tensor '{name}', which is not among its inputs")
            stack.extend(self.model.graph.node[self._producer[name]].input)
        return sorted(needed)

    def needed_along(self, stages: Iterable[Iterable[str]], available: Iterable[str]) -> list[str]:
        """The tensors among ``available`` that a chain of later stages needs.

        ``stages`` are the outputs of each later stage, in order; a stage may use what
        the stages before it computed. A tensor that skips over a stage (a skip
        connection from the device straight to the cloud) is included, so it can be
        passed along through the stages in between.
        """
        have = set(available)
        produced: set[str] = set()
        needed: set[str] = set()
        for outputs in stages:
            outs = list(outputs)
            needed.update(n for n in self.needed_inputs(outs, have | produced) if n in have)
            produced.update(outs)
        return sorted(needed)

    def extract(self, inputs: Iterable[str], outputs: Iterable[str]) -> onnx.ModelProto:
        """The stage computing ``outputs`` from (the needed subset of) ``inputs``."""
        outs = list(dict.fromkeys(outputs))
        ins = self.needed_inputs(outs, inputs)
        stage = self._extractor.extract_model(ins, outs)
        stage.ir_version = self.model.ir_version
        del stage.metadata_props[:]
        stage.metadata_props.extend(self.model.metadata_props)
        return stage
