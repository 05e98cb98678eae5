"""`tierflow bench split`: the grid sampling, and a smoke run over real nodes (one model, one profile)."""

from __future__ import annotations

import onnx
import pytest

from tierflow.bench.split import Settings, chained, run_split_bench, sample_grid
from tierflow.model.registry import resolve_model
from tierflow.planner.search import candidate_grid, plan
from tierflow.planner.snapshot import Snapshot, TierState, links_for
from tierflow.profiling.graph_builder import build_unit_graph
from tierflow.types.links import get_profile


def test_a_sampled_grid_keeps_the_chosen_and_single_tier_plans() -> None:
    graph = build_unit_graph(onnx.load(str(resolve_model("demo-vision"))))
    speeds = {"device": 0.01, "edge": 0.004, "cloud": 0.001}
    tiers = tuple(TierState(name=t, unit_s={u.name: s for u in graph.units}) for t, s in speeds.items())
    snap = Snapshot(tiers=tiers, links=links_for(get_profile("wifi")))
    chosen = plan(graph, snap)
    grid = candidate_grid(graph, snap, include=[chosen])
    must, rest = sample_grid(grid, chosen, 12, seed=0)
    assert must[0].key == chosen.key
    assert {p.kind() for p in must} >= {"device-only", "edge-only", "cloud-only"}
    assert len(must) + len(rest) == 12
    assert len({p.key for p in must + rest}) == 12
    scores = [p.prediction.score for p in rest]
    assert scores == sorted(scores)  # best predicted first
    assert rest[:4] == [p for p in grid if p.key not in {m.key for m in must}][:4]  # the top is kept
    whole, _ = sample_grid(grid, chosen, 1000, seed=0)
    assert sum(len(x) for x in sample_grid(grid, chosen, 1000, seed=0)) == len(grid)
    assert whole[0].key == chosen.key


def test_the_device_cloud_link_chains_access_and_backhaul() -> None:
    link = chained(get_profile("4g"))
    assert link.up_bps == get_profile("4g").up_bps
    assert link.rtt_s == pytest.approx(0.060)
    assert 0.001 < link.loss < 0.0011


@pytest.mark.slow
def test_split_bench_smoke_on_one_model_and_profile() -> None:
    result = run_split_bench(["demo-lm"], ["wifi"], Settings(requests=1, max_plans=8))
    figures = result["models"]["demo-lm"]["profiles"]["wifi"]
    ratio = lambda a, b: pytest.approx(figures[a] / figures[b], rel=0.01)  # noqa: E731
    for key in ("chosen_ms", "oracle_ms", "device_only_ms", "edge_only_ms", "cloud_only_ms"):
        assert figures[key] > 0
    assert figures["oracle_ms"] <= figures["chosen_ms"]
    assert figures["chosen_over_oracle"] == ratio("chosen_ms", "oracle_ms")
    assert figures["speedup_vs_cloud_only"] == ratio("cloud_only_ms", "chosen_ms")
    best_single = min(figures["device_only_ms"], figures["edge_only_ms"], figures["cloud_only_ms"])
    assert figures["speedup_vs_best_single_tier"] == pytest.approx(best_single / figures["chosen_ms"], 0.01)
    assert figures["energy_vs_device_only"] > 0
    described = [row[0] for row in figures["plans"]]
    assert figures["chosen"] in described and figures["oracle"] == described[0]
    assert figures["measured_plans"] + figures["skipped_by_bound"] <= 8
    summary = result["summary"]
    assert summary["cases"] == 1
    assert summary["max_chosen_over_oracle"] == figures["chosen_over_oracle"]
    assert summary["neurosurgeon_mean_speedup_vs_cloud_only"] == 3.1
    hops = set(result["models"]["demo-lm"]["overhead_per_hop_ms"])
    assert hops == {"device-edge", "edge-cloud", "device-cloud"}
