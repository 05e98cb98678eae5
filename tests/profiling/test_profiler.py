"""Profiling: ORT per-node shares, scaled to measured stage latency; a slowdown is learned; the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tierflow.errors import ConfigError, InvalidInputError
from tierflow.node.executor import NodeExecutor
from tierflow.planner.graph import UnitGraph
from tierflow.planner.profile import StageTiming, calibrate, profile_remote, timings_from_stats, unit_shares
from tierflow.profiling.graph_builder import build_unit_graph, example_feeds, input_dtypes
from tierflow.profiling.profiler import (
    ProfileCache,
    load_timings,
    node_times,
    profile_local,
    tier_fingerprint,
)
from tierflow.runtime.session import SessionOptions
from tierflow.runtime.stages import StageRunner

OPTIONS = SessionOptions(intra_op_threads=1, providers=("CPUExecutionProvider",))


def mlp(width: int = 384, rows: int = 128, layers: int = 3) -> onnx.ModelProto:
    """x -> (MatMul -> Relu) x layers: named nodes, a few milliseconds of work."""
    rng = np.random.default_rng(0)
    nodes, inits, h = [], [], "x"
    for i in range(layers):
        inits.append(
            numpy_helper.from_array(rng.normal(size=(width, width)).astype(np.float32) * 0.05, f"w{i}")
        )
        nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [f"m{i}"], name=f"layer{i}/mm"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out], name=f"layer{i}/relu"))
        h = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return mlp()


@pytest.fixture(scope="module")
def graph(model: onnx.ModelProto) -> UnitGraph:
    return build_unit_graph(model, granularity="chain")


def test_ort_profile_gives_every_node_a_time(model: onnx.ModelProto, graph: UnitGraph) -> None:
    feeds = example_feeds(graph, input_dtypes(model))
    times = node_times(model, feeds, runs=1)
    assert {f"layer{i}/mm" for i in range(3)} <= set(times)
    assert all(t > 0 for t in times.values())
    shares = unit_shares(graph, times)
    assert [u.name for u in graph.units] == ["layer0/mm", "layer1/mm", "layer2/mm"]  # MatMul + its ReLU
    assert sum(shares.values()) == pytest.approx(sum(times.values()))


def test_calibration_splits_each_stage_by_shares(graph: UnitGraph) -> None:
    shares = {"layer0/mm": 1.0, "layer1/mm": 3.0, "layer2/mm": 2.0}
    timings = [StageTiming(inputs=("x",), outputs=("h1",), seconds=8.0)]  # layers 0 and 1
    unit_s = calibrate(graph, shares, timings)
    assert unit_s["layer0/mm"] == pytest.approx(2.0) and unit_s["layer1/mm"] == pytest.approx(6.0)
    assert unit_s["layer2/mm"] == pytest.approx(4.0)  # not measured: its share x the measured ratio (2)
    with pytest.raises(InvalidInputError):
        calibrate(graph, shares, [])


def test_a_simulated_slowdown_is_learned_by_measuring(model: onnx.ModelProto, graph: UnitGraph) -> None:
    feeds = example_feeds(graph, input_dtypes(model))
    shares = unit_shares(graph, node_times(model, feeds, runs=1))
    profiles = {}
    for factor in (1.0, 6.0):
        run = StageRunner(model, OPTIONS, slowdown=factor).run
        profiles[factor] = profile_local(graph, run, feeds, shares, tier="t", fingerprint=str(factor), runs=3)
    fast, slow = profiles[1.0], profiles[6.0]
    # the sleep stretches each run to 6x its own compute; the bound leaves room for a busy machine
    assert slow.total_s > 2.5 * fast.total_s, (slow.total_s, fast.total_s)
    assert sum(slow.unit_s.values()) == pytest.approx(slow.stages[0].seconds)
    assert slow.source == "local" and set(slow.unit_s) == {u.name for u in graph.units}


def test_remote_tier_from_the_stage_times_it_reports(model: onnx.ModelProto, graph: UnitGraph) -> None:
    executor = NodeExecutor(model.SerializeToString(), "edge", OPTIONS, slowdown=2.0)
    feeds = example_feeds(graph, input_dtypes(model))
    first = executor.run_stage(dict(feeds), ["h0"])
    executor.run_stage({"h0": first["h0"]}, ["y"])
    stages = [(("x",), ("h0",)), (("h0",), ("y",))]
    timings = timings_from_stats(executor.stats, stages)
    assert [t.outputs for t in timings] == [("h0",), ("y",)]
    shares = {u.name: 1.0 for u in graph.units}
    profile = profile_remote(graph, shares, timings, tier="edge", fingerprint="remote")
    assert profile.unit_s["layer0/mm"] == pytest.approx(executor.stats["h0"].total_s)
    assert profile.unit_s["layer1/mm"] + profile.unit_s["layer2/mm"] == pytest.approx(
        executor.stats["y"].total_s
    )
    assert profile.source == "remote"
    # the same from a JSON report
    dicts = {k: {"calls": v.calls, "total_s": v.total_s} for k, v in executor.stats.items()}
    assert timings_from_stats(dicts, stages) == timings


def test_cache_round_trip(tmp_path: Path, graph: UnitGraph) -> None:
    cache = ProfileCache(tmp_path)
    shares = {u.name: 1.0 for u in graph.units}
    profile = profile_remote(
        graph,
        shares,
        [StageTiming(inputs=("x",), outputs=("y",), seconds=0.3)],
        tier="cloud",
        fingerprint="fp1",
    )
    path = cache.put(graph, profile)
    assert path.parent == tmp_path and path.name.startswith(graph.model_sha256[:16])
    assert cache.get(graph, "fp1") == profile
    assert cache.get(graph, "fp2") is None
    other = build_unit_graph(mlp(), granularity="node")  # same model, other units: a different entry
    assert cache.get(other, "fp1") is None
    path.write_text("{not json", encoding="utf-8")
    assert cache.get(graph, "fp1") is None


def test_fingerprints_and_timing_files(tmp_path: Path) -> None:
    assert tier_fingerprint("device", threads=1) != tier_fingerprint("device", threads=2)
    assert tier_fingerprint("device", threads=1) == tier_fingerprint("device", threads=1)
    good = tmp_path / "edge.json"
    good.write_text(json.dumps({"stages": [{"inputs": ["x"], "outputs": ["y"], "seconds": 0.01}]}))
    assert load_timings(good)[0].seconds == 0.01
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stages": [{"outputs": ["y"], "seconds": -1}]}))
    with pytest.raises(ConfigError, match="not stage timings"):
        load_timings(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_timings(tmp_path / "missing.json")
