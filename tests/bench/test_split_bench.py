"""`tierflow bench split`: grid sampling, one topology with the planner, and a run whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tierflow.bench.split import Settings, open_model, run_split_bench, sample_grid
from tierflow.errors import ModelNotFoundError
from tierflow.model.registry import resolve_model
from tierflow.node.deploy import DEVICE_CLOUD, DEVICE_EDGE, EDGE_CLOUD, LocalDeployment
from tierflow.planner.search import candidate_grid, plan
from tierflow.planner.snapshot import LinkState, Snapshot, TierState, links_for
from tierflow.profiling.graph_builder import build_unit_graph
from tierflow.transport.linkemu import LinkEmulator
from tierflow.types.links import BACKHAUL, PROFILES, get_profile


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


@pytest.mark.parametrize("access", [name for name, p in PROFILES.items() if not p.offline])
def test_the_deployment_emulates_the_links_the_planner_assumes(tmp_path: Path, access: str) -> None:
    """One topology: what `tierflow up` (and the bench) put between the tiers is what `links_for` plans on."""
    profile = get_profile(access)
    deployment = LocalDeployment(tmp_path, BACKHAUL, links={  # emulators not started: only their profiles
        DEVICE_EDGE: LinkEmulator("127.0.0.1:1", profile),
        DEVICE_CLOUD: LinkEmulator("127.0.0.1:1", profile),
        EDGE_CLOUD: LinkEmulator("127.0.0.1:1", BACKHAUL),
    })
    for planned in links_for(profile):
        emulated = LinkState.from_profile(planned.a, planned.b, deployment.hop_profile(planned.a, planned.b))
        assert emulated == planned


def test_an_unknown_model_names_every_kind_the_bench_takes() -> None:
    with pytest.raises(ModelNotFoundError, match="alexnet.*mobilenetv2|demo-vision"):
        open_model("no-such-model")


# --- a model whose best plan is known -------------------------------------------------------------

INPUT_SHAPE = (1, 3, 128, 128)  # 49 KB in int8 frames: ~0.6 s up a 3g link
HIDDEN = 2048
REPEATS = 6  # products with the 2048x2048 matrix: ~1-10 ms on these machines' CPUs, x300 on the device


def known_split_model(path: Path) -> Path:
    """Two units: ``reduce`` (an average pool that shrinks the 49 KB input to 192 values, nearly free)
    and ``heavy`` (matrix products on them, 16 MB of weights read REPEATS times). With a device SIMULATED
    300x slower, a 3g link and a cloud at full speed the answer is known: the device reduces, the
    cloud computes -- device-only pays 300x the heavy unit, cloud-only sends the input up a 3g link,
    the edge (SIMULATED 50x slower) is slower than the cloud at everything."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((192, HIDDEN)).astype(np.float32) / 14,
        "w2": rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) / 45,
        "w3": rng.standard_normal((HIDDEN, 10)).astype(np.float32) / 45,
    }
    nodes = [
        helper.make_node("AveragePool", ["image"], ["reduce/out"], name="reduce/pool",
                         kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Flatten", ["reduce/out"], ["heavy/flat"], name="heavy/flatten", axis=1),
        helper.make_node("MatMul", ["heavy/flat", "w1"], ["heavy/h1"], name="heavy/fc1"),
        helper.make_node("Relu", ["heavy/h1"], ["heavy/r1"], name="heavy/relu1"),
    ]
    for i in range(2, 2 + REPEATS):  # the same 16 MB of weights, read REPEATS times
        nodes += [helper.make_node("MatMul", [f"heavy/r{i - 1}", "w2"], [f"heavy/h{i}"], name=f"heavy/fc{i}"),
                  helper.make_node("Relu", [f"heavy/h{i}"], [f"heavy/r{i}"], name=f"heavy/relu{i}")]
    nodes.append(helper.make_node("MatMul", [f"heavy/r{1 + REPEATS}", "w3"], ["logits"], name="heavy/out"))
    graph = helper.make_graph(
        nodes, "known-split",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"tierflow.blocks": json.dumps(["reduce/out"])})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
def test_the_bench_measures_a_split_where_the_answer_is_known(tmp_path: Path) -> None:
    model = known_split_model(tmp_path / "known.onnx")
    settings = Settings(requests=2, device_slowdown=300, edge_slowdown=50, cloud_slowdown=1, max_plans=8)
    result = run_split_bench([str(model)], ["3g"], settings)  # any ONNX file, as `--model PATH` takes
    figures = result["models"]["known.onnx"]["profiles"]["3g"]
    # the planner chose the split (straight to the cloud or relayed by the edge, which computes
    # nothing: the same placement), and the measurement agrees that it is the fastest plan
    placement = figures["chosen"].replace("(edge) -> ", "")
    assert placement == "device[reduce] -> cloud[heavy]", figures["plans"]
    assert figures["chosen_is_split"] and figures["chosen_kind"] == "device+cloud"
    assert figures["oracle"] == figures["chosen"], figures["plans"]
    assert figures["chosen_over_oracle"] == 1.0
    # by the margins the set-up gives it (a robust bound, not the exact figure)
    assert figures["speedup_vs_cloud_only"] > 2.0, figures
    assert figures["speedup_vs_device_only"] > 1.5, figures
    assert figures["chosen_ms"] < figures["edge_only_ms"]
    summary = result["summary"]
    assert summary["where_split"]["cases"] == 1
    assert summary["split_chosen"] == ["known.onnx 3g: device[reduce] -> cloud[heavy]"]
    assert summary["no_split_pays"] == []
