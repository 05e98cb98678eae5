"""Plans map to stages GraphCutter can cut and StageRunner can run; in sequence they give the whole output."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.planner.models import BUNDLED_NAMES, OPTIONS, bundled
from tierflow.errors import PlanError
from tierflow.planner.graph import UnitGraph
from tierflow.planner.plan import Plan, run_stages, stages_for
from tierflow.planner.search import candidate_grid, evaluate_plan, plan
from tierflow.planner.snapshot import BACKHAUL, Snapshot, TierState, links_for
from tierflow.profiling.graph_builder import build_unit_graph, example_feeds, input_dtypes
from tierflow.runtime.stages import StageRunner
from tierflow.types.links import get_profile


def snapshot_for(graph: UnitGraph, profile: str = "4g") -> Snapshot:
    """Profiles from MACs (no measuring): device 8x slower than the edge, cloud 4x faster."""
    base = {u.name: 1e-4 + u.macs * 2e-11 for u in graph.units}
    tiers = tuple(
        TierState(name=n, unit_s={u: s * f for u, s in base.items()})
        for n, f in (("device", 8.0), ("edge", 1.0), ("cloud", 0.25))
    )
    return Snapshot(tiers=tiers, links=links_for(get_profile(profile), BACKHAUL))


def sample(plans: list[Plan], k: int, rng: random.Random) -> list[Plan]:
    """``k`` plans: the best, one of each kind, and random others."""
    picked = {plans[0].key: plans[0]}
    for p in plans:
        picked.setdefault(("kind", p.kind()), p)  # type: ignore[arg-type]
    rest = [p for p in plans if p not in picked.values()]
    for p in rng.sample(rest, min(len(rest), max(0, k - len(picked)))):
        picked[p.key] = p
    return list(picked.values())


def check_split_equals_whole(name: str, graph: UnitGraph, plans: list[Plan], runner: StageRunner) -> None:
    model = bundled(name)
    feeds = example_feeds(graph, input_dtypes(model), seed=1)
    whole = runner.run(dict(feeds), list(graph.outputs))
    for p in plans:
        have = run_stages(p.stages, feeds, runner)
        for out in graph.outputs:
            np.testing.assert_allclose(
                have[out], whole[out], rtol=1e-5, atol=1e-5, err_msg=f"{p.describe()}: {out}"
            )
        # each stage reads only what it received or holds, and cutting it computes only its own units
        for stage in p.stages:
            if not stage.units:
                continue
            needed = runner.cutter.needed_inputs(list(stage.outputs), list(stage.inputs))
            assert set(needed) <= set(stage.inputs)
            units = graph.units_between(stage.inputs, stage.outputs)
            assert units <= set(stage.units), (p.describe(), stage.tier, units - set(stage.units))


@pytest.mark.parametrize("name", BUNDLED_NAMES)
def test_grid_plans_run_to_the_unsplit_output(name: str) -> None:
    graph = build_unit_graph(bundled(name))
    snapshot = snapshot_for(graph)
    chosen = plan(graph, snapshot)
    grid = candidate_grid(graph, snapshot, include=[chosen])
    assert chosen.key in {p.key for p in grid}
    kinds = {p.kind() for p in grid}
    assert {"device-only", "cloud-only", "device+cloud", "device+edge+cloud"} <= kinds
    plans = sample(grid, 10, random.Random(name))
    runner = StageRunner(bundled(name), OPTIONS)
    check_split_equals_whole(name, graph, [chosen, *plans], runner)


def random_forward_labels(graph: UnitGraph, m: int, rng: random.Random) -> list[int]:
    labels: list[int] = []
    for u in graph.units:
        low = max((labels[graph.index[p]] for p in graph.preds[u.name]), default=0)
        labels.append(min(m, low + (1 if rng.random() < 0.08 else 0)))
    return labels


def test_node_level_cuts_through_branches_run_too() -> None:
    """Cuts between single nodes of demo-vision: inside inception branches, across the long skip."""
    name = "demo-vision"
    graph = build_unit_graph(bundled(name), granularity="node")
    snapshot = snapshot_for(graph)
    rng = random.Random(7)
    plans = []
    for _ in range(6):
        labels = random_forward_labels(graph, 2, rng)
        plans.append(evaluate_plan(graph, snapshot, ("device", "edge", "cloud"), labels))
    multi = [
        h for p in plans for h in p.prediction.traffic if h.direction == "up" and len(h.tensors) > 1
    ]
    assert multi, "some cut should carry several tensors (branches or the skip)"
    check_split_equals_whole(name, graph, plans, StageRunner(bundled(name), OPTIONS))


def test_stage_bookkeeping() -> None:
    graph = build_unit_graph(bundled("demo-vision"))
    labels = [0, 0, 1, 1, 1, 2, 2, 2, 2]  # device: stem, inc1 | edge: down1..inc2 | cloud: down2..head
    stages = stages_for(graph, ("device", "edge", "cloud"), labels)
    device, edge, cloud = stages
    assert device.outputs == ("stem/out", "inc1/out") and device.sends == ("stem/out", "inc1/out")
    assert edge.receives == ("stem/out", "inc1/out")
    assert edge.inputs == ("inc1/out",) and edge.sends == ("stem/out", "inc2/out")  # relays the skip
    assert cloud.receives == ("stem/out", "inc2/out") and cloud.returns == ("logits",)
    assert edge.returns == ("logits",)  # results pass back through the edge
    with pytest.raises(PlanError, match="backwards"):
        stages_for(graph, ("device", "edge"), [1, 0, 0, 0, 0, 0, 0, 0, 0])


def test_split_stages_and_results_for_a_split_runner() -> None:
    graph = build_unit_graph(bundled("demo-lm"))
    snapshot = snapshot_for(graph, "wifi")
    n = len(graph.units)
    labels = [0] * 4 + [1] * (n - 4)
    p = evaluate_plan(graph, snapshot, ("device", "cloud"), labels)
    assert [t for t, _ in p.split_stages()] == ["device", "cloud"]
    assert p.results == ("logits", "exit_logits") or set(p.results) == {"logits", "exit_logits"}
    device_outputs = p.split_stages()[0][1]
    assert any(o.startswith("present.") for o in device_outputs)  # the device keeps its layers' cache
    returned = {t for h in p.prediction.traffic if h.direction == "down" for t in h.tensors}
    assert not any(t.startswith("present.") for t in returned)
