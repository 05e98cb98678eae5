"""A plan: which tier runs which units, the stages that follow from it, and what it should cost.

Stages are what a runtime executes: one per tier of the plan's path, in path
order. A stage's sub-graph computes ``outputs`` from ``inputs`` and can be cut out
with :class:`~tierflow.model.partition.GraphCutter` and run with
:class:`~tierflow.runtime.stages.StageRunner`. Around it, ``receives`` arrive
over the link from the previous tier, ``sends`` go on to the next (computed here
or relayed), ``returns`` travel back towards the device, and ``keeps`` stay here
(an LM's KV cache for the layers this tier holds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from tierflow.errors import PlanError
from tierflow.planner.cost import Prediction
from tierflow.planner.graph import UnitGraph
from tierflow.types.links import Direction
from tierflow.types.plans import PlanKind


class StageRunning(Protocol):
    """Anything that runs a stage in this process (``tierflow.runtime.stages.StageRunner``)."""

    def run(self, tensors: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]: ...


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Stage(_Frozen):
    """What one tier does for one request."""

    tier: str
    units: tuple[str, ...]
    inputs: tuple[str, ...]  # tensors the stage's sub-graph reads
    outputs: tuple[str, ...]  # tensors it computes that leave it (sent, returned or kept)
    receives: tuple[str, ...]  # arriving from the previous tier on the path
    sends: tuple[str, ...]  # going on to the next tier (computed here or relayed)
    returns: tuple[str, ...]  # graph outputs going back towards the device (computed here or relayed)
    keeps: tuple[str, ...]  # resident outputs that stay on this tier

    @property
    def computes(self) -> bool:
        return bool(self.units)


class Plan(_Frozen):
    """A decision: the path, each unit's tier, the stages, and the predicted cost."""

    path: tuple[str, ...]
    labels: tuple[int, ...]  # per unit (graph order): index into path
    assignment: dict[str, str]  # unit -> tier
    stages: tuple[Stage, ...]
    results: tuple[str, ...]  # the graph outputs the device gets back (resident ones stay where computed)
    prediction: Prediction
    exact: bool = True  # found by the exact search (False: scored from a fixed candidate)
    granularity: str = ""

    @property
    def key(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """Identity of the plan (two plans with the same key run the same way)."""
        return self.path, self.labels

    @property
    def tiers_used(self) -> tuple[str, ...]:
        """Tiers that compute at least one unit, in path order."""
        return tuple(s.tier for s in self.stages if s.computes)

    def split_stages(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """``(tier, outputs)`` of each stage that computes, in order: what a split runner executes
        (``tierflow.engine.split_runner.SplitPlan(stages=plan.split_stages(), returns=plan.results)``)."""
        return tuple((s.tier, s.outputs) for s in self.stages if s.units)

    @property
    def relays(self) -> bool:
        """True if a tier on the path only passes tensors on (it computes nothing)."""
        return any(not s.units for s in self.stages[1:])

    def cuts(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """``(from tier, to tier, tensors)`` for each forward hop that carries tensors."""
        return [(h.src, h.dst, h.tensors) for h in self.prediction.traffic if h.direction is Direction.UP]

    def describe(self) -> str:
        """``device[stem..inc1] -> cloud[down1..head]``; a tier that only relays is in parentheses."""
        parts = []
        for i, s in enumerate(self.stages):
            if s.units:
                span = s.units[0] if len(s.units) == 1 else f"{s.units[0]}..{s.units[-1]}"
                parts.append(f"{s.tier}[{span}]")
            elif i > 0:
                parts.append(f"({s.tier})")
        return " -> ".join(parts) if parts else "(nothing)"

    def kind(self) -> PlanKind:
        """Which tiers compute: ``device-only``, ``cloud-only``, ``device+cloud``, ``device+edge+cloud``, ...

        Raises :class:`PlanError` for a plan on a tier other than device, edge and cloud.
        """
        return PlanKind.of(self.tiers_used)


def stages_for(graph: UnitGraph, path: Sequence[str], labels: Sequence[int]) -> tuple[Stage, ...]:
    """The stages of the plan that puts unit ``i`` on ``path[labels[i]]``."""
    idx = graph.index
    src: dict[str, int] = {}
    dst: dict[str, int] = {}
    for name, t in graph.tensors.items():
        src[name] = 0 if t.producer is None else labels[idx[t.producer]]
        dst[name] = max((labels[idx[c]] for c in t.consumers), default=src[name])
        if dst[name] < src[name]:
            raise PlanError(f"tensor '{name}' would flow backwards")
    stages: list[Stage] = []
    for label, tier in enumerate(path):
        units = [u for i, u in enumerate(graph.units) if labels[i] == label]
        names = {u.name for u in units}
        inputs = [x for u in units for x in u.inputs if graph.tensors[x].producer not in names]
        outputs: list[str] = []
        for u in units:
            for x in u.outputs:
                if graph.tensors[x].output or dst[x] > label:
                    outputs.append(x)
        live = {n: t for n, t in graph.tensors.items() if not t.resident}
        stages.append(Stage(
            tier=tier,
            units=tuple(u.name for u in units),
            inputs=tuple(dict.fromkeys(inputs)),
            outputs=tuple(dict.fromkeys(outputs)),
            receives=tuple(n for n in live if src[n] < label <= dst[n]) if label else (),
            sends=tuple(n for n in live if src[n] <= label < dst[n]),
            returns=tuple(n for n, t in live.items() if t.output and t.producer is not None
                          and src[n] >= label > 0),
            keeps=tuple(n for n, t in graph.tensors.items() if t.resident and t.producer in names),
        ))
    return tuple(stages)


def run_stages(
    stages: Sequence[Stage], feeds: Mapping[str, np.ndarray], runner: StageRunning
) -> dict[str, np.ndarray]:
    """Run ``stages`` one after another in this process; returns every tensor seen.

    The reference for what a split run must compute: the multi-process engine does
    the same with each stage on its own tier and the tensors over real links.
    """
    have: dict[str, np.ndarray] = dict(feeds)
    for stage in stages:
        if not stage.units:
            continue
        missing = [t for t in stage.inputs if t not in have]
        if missing:
            raise PlanError(f"stage on {stage.tier} needs '{missing[0]}', which no earlier stage produced")
        have.update(runner.run({t: have[t] for t in stage.inputs}, list(stage.outputs)))
    return have
