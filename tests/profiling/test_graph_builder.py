"""Unit graphs of real models: units, boundary tensors and their sizes."""

from __future__ import annotations

import networkx as nx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.planner.models import bundled
from tierflow.errors import InvalidInputError, InvalidModelError
from tierflow.profiling.graph_builder import (
    build_unit_graph,
    default_input_shapes,
    example_feeds,
    input_dtypes,
)


def test_demo_vision_blocks_are_units_and_the_long_skip_crosses() -> None:
    graph = build_unit_graph(bundled("demo-vision"))
    assert graph.granularity == "auto"
    assert [u.name for u in graph.units] == [
        "stem",
        "inc1",
        "down1",
        "res1",
        "inc2",
        "down2",
        "res2",
        "skip",
        "head",
    ]
    stem = graph.tensors["stem/out"]
    assert stem.producer == "stem" and stem.consumers == ("inc1", "skip")  # the long skip
    assert stem.shape == (1, 64, 56, 56) and stem.nbytes == 64 * 56 * 56 * 4
    assert graph.tensors["image"].producer is None and graph.tensors["logits"].output
    assert graph.preds["skip"] == ("stem", "res2")
    assert sum(len(u.nodes) for u in graph.units) == len(bundled("demo-vision").graph.node)
    assert graph.unit("down2").weight_bytes > 0 and graph.unit("res1").macs > 0


def test_granularities_give_acyclic_graphs_in_topological_order() -> None:
    for name in ("demo-vision", "random-image"):
        model = bundled(name)
        counts = {}
        for granularity in ("node", "chain", "blocks"):
            graph = build_unit_graph(model, granularity=granularity)
            counts[granularity] = len(graph.units)
            dag = nx.DiGraph([(p, u) for u, ps in graph.preds.items() for p in ps])
            assert nx.is_directed_acyclic_graph(dag)
            for u in graph.units:  # producers come before readers
                assert all(graph.index[p] < graph.index[u.name] for p in graph.preds[u.name])
        assert counts["node"] > counts["chain"] > counts["blocks"] > 3


def test_lm_layers_and_kv_cache_stays_put() -> None:
    model = bundled("demo-lm")
    graph = build_unit_graph(model)
    names = [u.name for u in graph.units]
    assert [n for n in names if n.startswith("blocks.")] == [f"blocks.{i}" for i in range(6)]
    assert graph.input_shapes["input_ids"] == (1, 32)
    assert graph.input_shapes["past_key_values.0.key"][2] == 0
    present = graph.tensors["present.3.key"]
    assert present.resident and present.producer == "blocks.3"
    assert not graph.tensors["logits"].resident
    longer = build_unit_graph(model, dims={"seq": 8, "past": 4})
    assert longer.tensors["logits"].shape[:2] == (1, 8)
    assert longer.tensors["present.0.key"].shape[2] == 12


def test_tensor_sizes_match_a_real_run() -> None:
    model = bundled("random-image")
    graph = build_unit_graph(model, granularity="chain")
    feeds = example_feeds(graph, input_dtypes(model))
    names = [n for n, t in graph.tensors.items() if t.producer is not None][:12]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for n in names:
        probe.graph.output.append(helper.make_empty_tensor_value_info(n))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    values = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        names, feeds
    )
    for n, v in zip(names, values, strict=True):
        assert graph.tensors[n].shape == v.shape and graph.tensors[n].nbytes == v.nbytes, n


def test_sizes_inference_cannot_see_are_measured() -> None:
    """A Reshape to a shape computed at run time defeats inference; the graph still knows the size."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape"),
        helper.make_node("MatMul", ["y", "w"], ["z"], name="mm"),
        helper.make_node("Relu", ["z"], ["out"], name="relu"),
    ]
    w = numpy_helper.from_array(np.ones((6, 3), np.float32), "w")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    units = build_unit_graph(model, input_shapes={"x": (5, 6)}, granularity="node")
    assert units.tensors["z"].shape == (5, 3)
    assert units.tensors["out"].nbytes == 5 * 3 * 4


def test_weight_only_nodes_are_not_units_and_dead_nodes_are_dropped() -> None:
    nodes = [
        helper.make_node("Identity", ["w"], ["w2"], name="weight_copy"),
        helper.make_node("MatMul", ["x", "w2"], ["y"], name="mm"),
        helper.make_node("Relu", ["x"], ["unused"], name="dead"),
    ]
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [w],
    )
    units = build_unit_graph(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), granularity="node"
    )
    assert [u.name for u in units.units] == ["mm"]
    assert units.unit("mm").weights == ("w",) and units.unit("mm").weight_bytes == 64


def test_bad_requests_are_user_errors() -> None:
    model = bundled("demo-vision")
    with pytest.raises(InvalidInputError, match="unknown granularity"):
        build_unit_graph(model, granularity="layer")
    with pytest.raises(InvalidInputError, match="no input named 'pixels'"):
        build_unit_graph(model, input_shapes={"pixels": (1, 3, 224, 224)})
    with pytest.raises(InvalidInputError, match="rank"):
        build_unit_graph(model, input_shapes={"image": (1, 3, 224)})
    with pytest.raises(InvalidModelError, match="no usable tierflow.blocks"):
        build_unit_graph(bundled("demo-lm"), granularity="blocks")
    assert default_input_shapes(model) == {"image": (1, 3, 224, 224)}
