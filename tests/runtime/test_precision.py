"""FP16 weights computed in FP32 on a provider without fast FP16 kernels (runtime/precision.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support.packages import compile_bundled
from tierflow.model.package import Package
from tierflow.node.executor import NodeExecutor, model_id
from tierflow.runtime.loader import load
from tierflow.runtime.precision import should_widen, widen_fp16
from tierflow.runtime.session import SessionOptions, open_session

RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((8, 4)).astype(np.float16)
BIAS = np.array([0.1, -0.2, 0.3, 0.0], np.float16)


def fp16_model() -> onnx.ModelProto:
    """x (float32) -> Cast to FP16 -> MatMul + Add with FP16 weights -> Cast back: what an FP16 target
    compiled with its inputs and outputs kept in FP32 looks like."""
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["x16", "w"], ["h"]),
        helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(BIAS, "b")),
        helper.make_node("Add", ["h", "b"], ["y16"]),
        helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(WEIGHT, "w")],
        value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT16, [2, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_widening_computes_the_fp16_weights_in_fp32() -> None:
    model = fp16_model()
    assert should_widen(model, "CPUExecutionProvider")
    wide = widen_fp16(model)
    onnx.checker.check_model(wide, full_check=True)  # every declared type agrees with the new weights
    assert {t.data_type for t in wide.graph.initializer} == {TensorProto.FLOAT}
    assert model.graph.initializer[0].data_type == TensorProto.FLOAT16  # the stored model is left alone
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    (y,) = open_session(wide.SerializeToString()).run(None, {"x": x})
    expected = x @ WEIGHT.astype(np.float32) + BIAS.astype(np.float32)  # FP16-rounded weights in FP32
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    (y16,) = open_session(model.SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(y, y16, atol=2e-2)  # FP16 arithmetic differs from it by its rounding only


def test_what_is_not_widened() -> None:
    model = fp16_model()
    assert not should_widen(model, "CUDAExecutionProvider")  # fast FP16 kernels: the graph runs as stored
    assert not should_widen(widen_fp16(model), "CPUExecutionProvider")  # no FP16 weights
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 8])])
    with_subgraph = fp16_model()
    with_subgraph.graph.node.append(
        helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch)
    )
    assert not should_widen(with_subgraph, "CPUExecutionProvider")  # its subgraph's types would stay FP16


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bundled("random-image", tmp_path_factory.mktemp("img") / "image.tfm")


def test_an_fp16_target_keeps_its_identity_and_says_how_it_computes(package: Path) -> None:
    pkg = Package.open(package)
    assert pkg.manifest.targets["edge"].precision == "fp16"
    stored = pkg.artifact("edge")
    cpu = SessionOptions(intra_op_threads=1, providers=("CPUExecutionProvider",))
    node = NodeExecutor(stored, "edge", cpu)
    assert node.widened and node.model_id == model_id(stored)  # tiers still name the model as stored
    cloud = NodeExecutor(pkg.artifact("cloud"), "cloud", cpu)
    assert not cloud.widened  # an FP32 target has nothing to widen
    session = load(package, target="edge", threads=1)  # this machine: the CPU provider
    assert "precision=fp16 (computed in fp32)" in session.describe()
    made = node.generate_image("a red car", 64, False, 3)
    again = session.generate("a red car", resolution=64, refine=False, seed=3)
    np.testing.assert_array_equal(made.pixels, again.pixels)  # the node and the loader run the same graph
