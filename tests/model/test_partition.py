"""Cutting graphs into stages: chains, skip connections, and bad cuts."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support.tiny_lm import build_tiny_lm
from tierflow.errors import PlanError
from tierflow.model.partition import GraphCutter
from tierflow.runtime.session import SessionOptions
from tierflow.runtime.stages import StageRunner


def skip_model() -> helper.ModelProto:
    """x -> a = relu(x*w1) -> b = a*w2 -> y = b + x   (x skips over the middle)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Relu", ["m1"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["b"]),
        helper.make_node("Add", ["b", "x"], ["y"]),
    ]
    inits = [numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), n) for n in ("w1", "w2")]
    graph = helper.make_graph(
        nodes,
        "skip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_cut_across_a_skip_connection_sends_both_tensors() -> None:
    cutter = GraphCutter(skip_model())
    assert cutter.needed_inputs(["y"], ["a", "x"]) == ["a", "x"]
    with pytest.raises(PlanError, match="needs tensor 'x'"):
        cutter.needed_inputs(["y"], ["a"])


def test_split_run_equals_the_whole_model() -> None:
    runner = StageRunner(skip_model(), SessionOptions(intra_op_threads=1))
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    whole = runner.run({"x": x}, ["y"])["y"]
    first = runner.run({"x": x}, ["a"])
    second = runner.run({"a": first["a"], "x": x}, ["y"])["y"]
    np.testing.assert_allclose(second, whole, rtol=1e-6)


def test_stage_sessions_are_cached() -> None:
    runner = StageRunner(skip_model(), SessionOptions(intra_op_threads=1))
    s1, _ = runner.session_for(["x"], ["a"])
    s2, _ = runner.session_for(["x", "b"], ["a"])  # b is not needed: same stage
    assert s1 is s2


def test_unknown_tensor_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="does not exist"):
        GraphCutter(skip_model()).needed_inputs(["nope"], ["x"])


def test_lm_split_between_layers_keeps_logits() -> None:
    runner = StageRunner(build_tiny_lm(), SessionOptions(intra_op_threads=1))
    z = np.zeros((1, 2, 0, 4), np.float32)
    feeds = {"input_ids": np.array([[0, 1, 2]], np.int64), "attention_mask": np.ones((1, 3), np.int64)}
    feeds |= {f"past_key_values.{i}.{k}": z for i in range(2) for k in ("key", "value")}
    whole = runner.run(feeds, ["logits"])["logits"]
    head = runner.run(feeds, ["h0", "present.1.key"])
    np.testing.assert_array_equal(runner.run(head, ["logits"])["logits"], whole)
