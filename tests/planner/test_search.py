"""The split search is exact: it matches brute force on chains, skips and random DAGs, for 2 and 3 tiers."""

from __future__ import annotations

import random

import pytest

from tests.planner.synthetic import brute_force, close, make_graph, make_snapshot, random_dag
from tierflow.errors import PlanError
from tierflow.planner.cost import PathCosts
from tierflow.planner.graph import UnitGraph
from tierflow.planner.search import (
    alternatives,
    candidate_grid,
    candidate_paths,
    chain_grid_size,
    count_forward_labelings,
    grid_size,
    min_cut_labels,
    plan,
)
from tierflow.planner.snapshot import LinkState, Snapshot, TierState


def chain(n: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(n - 1)]


def skips(n: int) -> list[tuple[int, int]]:
    """A chain with long skip connections (0 -> n-1, 1 -> n-2, ...): a cut inside sends several tensors."""
    return chain(n) + [(i, n - 1 - i) for i in range(n // 2) if n - 1 - i > i + 1]


def forward_friendly(graph: UnitGraph, rng: random.Random) -> tuple[UnitGraph, Snapshot]:
    """Tensors shrink along the graph, later units are heavy, the edge is near: three-tier plans win often."""
    tensors = dict(graph.tensors)
    for i, _ in enumerate(graph.units):
        nb = int(32e6 / 4**i) // 8 * 8 + 8
        tensors[f"t{i}"] = tensors[f"t{i}"].model_copy(
            update={"nbytes": nb, "shape": (nb // 8,), "dtype": "float64"}
        )
    tensors["x"] = tensors["x"].model_copy(update={"nbytes": 32_000_000, "shape": (8_000_000,)})
    graph = graph.model_copy(update={"tensors": tensors})
    base = {u.name: rng.uniform(0.001, 0.05) * (1 + i) for i, u in enumerate(graph.units)}
    tiers = (
        TierState(name="device", unit_s={k: v * 3 for k, v in base.items()}),
        TierState(name="edge", unit_s=dict(base)),
        TierState(name="cloud", unit_s={k: v * rng.uniform(0.05, 0.3) for k, v in base.items()}),
    )
    links = (
        LinkState(a="device", b="edge", up_bps=rng.choice([1e8, 3e8]), down_bps=1e8, rtt_s=0.002),
        LinkState(a="edge", b="cloud", up_bps=rng.choice([1e7, 3e7, 1e8]), down_bps=1e8, rtt_s=0.02),
        LinkState(a="device", b="cloud", up_bps=rng.choice([5e6, 1e7]), down_bps=3e7, rtt_s=0.05),
    )
    return graph, Snapshot(tiers=tiers, links=links, energy_weight=rng.choice([0.0, 0.05]))


def assert_exact(graph: UnitGraph, snapshot: Snapshot) -> str:
    """The search's plan scores exactly what brute force finds best; returns the plan's kind."""
    best = brute_force(graph, snapshot)
    assert best is not None
    found = plan(graph, snapshot)
    assert close(found.prediction.score, best[0]), (found.path, found.labels, best)
    assert found.prediction.feasible
    # the score the cut minimises is the score the prediction reports
    costs = PathCosts(graph, snapshot, found.path)
    assert close(costs.score_of(found.labels), found.prediction.score)
    return found.kind()


@pytest.mark.parametrize("tiers", [2, 3])
@pytest.mark.parametrize("shape", ["chain", "skips", "dag"])
def test_matches_brute_force(shape: str, tiers: int) -> None:
    for seed in range(12):
        rng = random.Random(f"{shape}-{tiers}-{seed}")
        n = rng.randint(2, 7 if tiers == 3 else 9)
        edges = {"chain": chain(n), "skips": skips(n), "dag": random_dag(n, rng)}[shape]
        graph = make_graph(n, edges, rng, input_readers=(0,) if shape != "dag" else (0, n // 2))
        snapshot = make_snapshot(
            graph,
            rng,
            tiers,
            energy_weight=rng.choice([0.0, 0.02, 0.2]),
            battery=rng.choice([None, 0.9, 0.3, 0.1]),
            compression=rng.choice(["int8", "raw"]),
        )
        assert_exact(graph, snapshot)


def test_three_tier_plans_are_exact_too() -> None:
    """Snapshots where cutting twice pays: the search must still equal brute force (and find 3-tier plans)."""
    kinds = []
    for seed in range(40):
        rng = random.Random(seed)
        n = rng.randint(3, 7)
        graph = make_graph(n, random_dag(n, rng, 0.2), rng)
        kinds.append(assert_exact(*forward_friendly(graph, rng)))
    assert kinds.count("device+edge+cloud") >= 5, kinds


def test_a_tensor_read_by_several_units_is_sent_once() -> None:
    rng = random.Random(0)
    graph = make_graph(4, [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)], rng)
    snapshot = make_snapshot(graph, rng, 2)
    costs = PathCosts(graph, snapshot, ("device", "edge"))
    pred = costs.evaluate([0, 1, 1, 1])  # t0 is read by three units on the edge
    forward = [h for h in pred.traffic if h.direction == "up"]
    assert forward[0].tensors.count("t0") == 1
    assert forward[0].wire_bytes == costs.wire["t0"]


def test_unavailable_tier_is_never_used() -> None:
    rng = random.Random(3)
    graph = make_graph(5, chain(5), rng)
    graph, snapshot = forward_friendly(graph, rng)
    snapshot = snapshot.without_tier("edge")
    found = plan(graph, snapshot)
    assert "edge" not in found.path
    assert_exact(graph, snapshot)
    assert all("edge" not in p for p in candidate_paths(snapshot))


def test_no_tier_at_all_names_why() -> None:
    rng = random.Random(4)
    graph = make_graph(3, chain(3), rng)
    snapshot = make_snapshot(graph, rng, 3)
    with pytest.raises(PlanError, match="may not compute"):
        plan(graph, snapshot, set())
    with pytest.raises(PlanError, match="unknown tier 'gpu'"):
        plan(graph, snapshot, {"gpu"})
    alone = snapshot.without_tier("edge").without_tier("cloud")
    small = alone.with_tier(alone.tier("device").model_copy(update={"memory_bytes": 2**20}))
    with pytest.raises(PlanError, match="device has 1.0 MiB"):
        plan(graph, small)
    assert plan(graph, snapshot, {"cloud"}).tiers_used == ("cloud",)


def test_privacy_keeps_the_input_on_the_device() -> None:
    for seed in range(10):
        rng = random.Random(seed)
        graph = make_graph(5, chain(5), rng)
        graph, snapshot = forward_friendly(graph, rng)
        snapshot = snapshot.model_copy(update={"privacy": True})
        found = plan(graph, snapshot)
        assert found.assignment["u0"] == "device"
        assert all("x" not in h.tensors for h in found.prediction.traffic)
        assert_exact(graph, snapshot)
    with pytest.raises(PlanError, match="privacy keeps unit 'u0'"):
        plan(graph, snapshot, {"cloud"})


def test_memory_limits_are_exact_and_named() -> None:
    for seed in range(15):
        rng = random.Random(100 + seed)
        n = rng.randint(3, 6)
        graph = make_graph(n, random_dag(n, rng), rng)
        snapshot = make_snapshot(graph, rng, 3)
        need = graph.total_weight_bytes()
        device = snapshot.tier("device").model_copy(update={"memory_bytes": need * rng.uniform(0.3, 0.7)})
        edge = snapshot.tier("edge").model_copy(update={"memory_bytes": need * rng.uniform(0.4, 0.9)})
        limited = snapshot.with_tier(device).with_tier(edge)
        best = brute_force(graph, limited)
        if best is None:
            with pytest.raises(PlanError):
                plan(graph, limited)
            continue
        found = plan(graph, limited)
        assert found.prediction.feasible
        assert close(found.prediction.score, best[0])
    # a stage too big for every reachable tier: the error says which and by how much
    graph = make_graph(3, chain(3), random.Random(1))
    snapshot = make_snapshot(graph, random.Random(1), 1)
    tiny = snapshot.with_tier(snapshot.tier("device").model_copy(update={"memory_bytes": 2**20}))
    with pytest.raises(PlanError, match=r"needs .* MiB but device has 1.0 MiB"):
        plan(graph, tiny)


def test_min_cut_labels_are_monotone_and_forward() -> None:
    rng = random.Random(9)
    graph = make_graph(8, random_dag(8, rng), rng)
    graph, snapshot = forward_friendly(graph, rng)
    costs = PathCosts(graph, snapshot, ("device", "edge", "cloud"))
    labels = min_cut_labels(costs)
    assert labels is not None
    for t in graph.tensors.values():
        if t.producer is not None:
            assert all(labels[graph.index[c]] >= labels[graph.index[t.producer]] for c in t.consumers)


def test_alternatives_bound_the_choice() -> None:
    rng = random.Random(5)
    graph, snapshot = forward_friendly(make_graph(6, skips(6), rng), rng)
    chosen = plan(graph, snapshot)
    alts = alternatives(graph, snapshot)
    assert set(alts) == {"device-only", "edge-only", "cloud-only", "best 2-tier", "best 3-tier"}
    scores = {k: v.prediction.score for k, v in alts.items() if not isinstance(v, str)}
    assert close(scores["best 3-tier"], chosen.prediction.score)
    assert (
        scores["best 2-tier"] <= min(scores["device-only"], scores["edge-only"], scores["cloud-only"]) + 1e-12
    )
    assert chosen.prediction.score <= scores["best 2-tier"] + 1e-12
    assert alts["device-only"].tiers_used == ("device",)  # type: ignore[union-attr]


def test_candidate_grid_contains_the_choice_and_has_the_documented_size() -> None:
    rng = random.Random(6)
    for n in (3, 5):
        graph, snapshot = forward_friendly(make_graph(n, chain(n), rng), rng)
        assert len(candidate_grid(graph, snapshot)) == chain_grid_size(n, 3) == grid_size(graph, snapshot)
        assert not any(p.relays for p in candidate_grid(graph, snapshot))
        chosen = plan(graph, snapshot)
        grid = candidate_grid(graph, snapshot, include=[chosen])  # a relaying choice is added
        assert len(grid) == chain_grid_size(n, 3) + chosen.relays
        assert chosen.key in {p.key for p in grid}
        assert close(grid[0].prediction.score, chosen.prediction.score)  # sorted best first
    with_relays = candidate_grid(graph, snapshot, relays=True)
    assert len(with_relays) > len(grid) and any(p.relays for p in with_relays)
    assert count_forward_labelings(graph, 2) == 21  # C(5 + 2, 2) for a chain of 5


def test_relay_through_the_edge_when_the_direct_link_is_poor() -> None:
    """Direct device -> cloud is slow, via the edge fast: the edge relays though it computes nothing."""
    rng = random.Random(8)
    graph = make_graph(3, chain(3), rng)
    unit_s = {u.name: 0.05 for u in graph.units}
    tiers = (
        TierState(name="device", unit_s={u: 1.0 for u in unit_s}),
        TierState(name="edge", unit_s={u: 10.0 for u in unit_s}),
        TierState(name="cloud", unit_s={u: 0.01 for u in unit_s}),
    )
    links = (
        LinkState(a="device", b="edge", up_bps=1e9, down_bps=1e9, rtt_s=0.001),
        LinkState(a="edge", b="cloud", up_bps=1e9, down_bps=1e9, rtt_s=0.001),
        LinkState(a="device", b="cloud", up_bps=1e5, down_bps=1e5, rtt_s=0.5),
    )
    found = plan(graph, Snapshot(tiers=tiers, links=links))
    assert found.path == ("device", "edge", "cloud") and found.relays
    assert found.tiers_used == ("cloud",)
    assert found.describe() == "(edge) -> cloud[u0..u2]"
    assert found.key in {
        p.key for p in candidate_grid(graph, Snapshot(tiers=tiers, links=links), include=[found])
    }
