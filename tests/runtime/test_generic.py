"""The generic runner: any ONNX model, given or generated inputs, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tierflow.errors import InvalidInputError, InvalidModelError, UnsupportedModelError
from tierflow.model.demo import vision
from tierflow.model.feeds import BATCH_DEFAULT, DIM_DEFAULT, is_batch_like
from tierflow.runtime.generic import GenericRunner, TensorSummary, load_npy_inputs
from tierflow.runtime.session import SessionOptions

ONE_THREAD = SessionOptions(intra_op_threads=1)


def tiny_model(metadata: dict[str, str] | None = None) -> bytes:
    """y = x * float(ids); z = not flag; w = relu(u): float, int64, bool inputs and an unnamed dim."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "ids_f"], ["y"]),
            helper.make_node("Not", ["flag"], ["z"]),
            helper.make_node("Relu", ["u"], ["w"]),
        ],
        "tiny",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, [3]),
            helper.make_tensor_value_info("u", TensorProto.FLOAT, [None, None, 2]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"]),
            helper.make_tensor_value_info("z", TensorProto.BOOL, [3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [None, None, 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, metadata or {})
    onnx.checker.check_model(model, full_check=True)
    data: bytes = model.SerializeToString()
    return data


@pytest.fixture(scope="module")
def tiny() -> GenericRunner:
    return GenericRunner.open(tiny_model(), ONE_THREAD)


def test_generated_inputs_follow_the_documented_defaults(tiny: GenericRunner) -> None:
    feeds = tiny.prepare_inputs(seed=0)
    assert feeds["x"].shape == (BATCH_DEFAULT, DIM_DEFAULT) and feeds["x"].dtype == np.float32
    assert feeds["ids"].shape == (1, 8) and feeds["ids"].dtype == np.int64
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 10
    assert feeds["flag"].shape == (3,) and feeds["flag"].dtype == np.bool_
    assert feeds["u"].shape == (1, 8, 2)  # unnamed first axis counts as batch, the rest as DIM_DEFAULT


def test_run_computes_and_summarises(tiny: GenericRunner) -> None:
    result = tiny.run(seed=3)
    feeds = tiny.prepare_inputs(seed=3)  # same seed, same inputs
    np.testing.assert_array_equal(result.arrays["y"], feeds["x"] * feeds["ids"].astype(np.float32))
    np.testing.assert_array_equal(result.arrays["z"], ~feeds["flag"])
    summary = {s.name: s for s in result.outputs}
    y = result.arrays["y"]
    assert summary["y"] == TensorSummary("y", (1, 8), "float32", float(y.min()), float(y.max()),
                                         pytest.approx(float(y.astype(np.float64).mean())))  # type: ignore[arg-type]
    assert summary["z"].dtype == "bool" and 0 <= summary["z"].mean <= 1  # type: ignore[operator]
    assert [s.name for s in result.inputs] == ["x", "ids", "flag", "u"]
    assert result.provider == "CPUExecutionProvider" and result.elapsed_s >= 0
    assert not np.array_equal(tiny.run(seed=4).arrays["y"], y)


def test_given_inputs_bind_symbolic_dims(tiny: GenericRunner) -> None:
    x = np.ones((2, 5), np.float32)
    result = tiny.run({"x": x}, seed=0)
    assert result.arrays["y"].shape == (2, 5)  # ids was generated to match x's batch and seq
    np.testing.assert_array_equal(result.arrays["y"], result.arrays["y"].round())


def test_dims_override_and_metadata_hints() -> None:
    hinted = GenericRunner.open(tiny_model({"tierflow.dims": json.dumps({"seq": 3, "batch": 2})}), ONE_THREAD)
    assert hinted.prepare_inputs()["x"].shape == (2, 3)
    assert hinted.prepare_inputs(dims={"seq": 4})["x"].shape == (2, 4)
    with pytest.raises(InvalidModelError, match="tierflow.dims"):  # a broken hint is a broken model
        GenericRunner.open(tiny_model({"tierflow.dims": "not json"}), ONE_THREAD)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"nope": np.zeros(3, np.float32)}, "unknown input 'nope'"),
        ({"flag": np.zeros(4, np.bool_)}, "must have shape [3]"),
        ({"flag": np.zeros((3, 1), np.bool_)}, "wrong rank"),
        ({"x": np.zeros((1, 8), np.float64)}, "must be float32, got float64"),
        ({"x": np.zeros((2, 5), np.float32), "ids": np.zeros((2, 6), np.int64)}, "seq=6 but another"),
    ],
)
def test_bad_inputs_are_one_line_typed_errors(tiny: GenericRunner, given: dict[str, np.ndarray],
                                              message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        tiny.run(given)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_shape_the_graph_rejects_is_a_typed_error() -> None:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["length"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    runner = GenericRunner.open(model.SerializeToString(), ONE_THREAD)
    with pytest.raises(InvalidInputError, match="rejected these inputs"):
        runner.run()  # length defaults to 8, which cannot become 2x3
    assert runner.run({"x": np.arange(6, dtype=np.float32)}).arrays["y"].shape == (2, 3)


def test_unfeedable_input_type() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match="tensor\\(string\\)"):
        GenericRunner.open(model.SerializeToString(), ONE_THREAD)


def test_demo_vision() -> None:
    runner = GenericRunner.open(vision.build_model().SerializeToString(), ONE_THREAD)
    result = runner.run(seed=0)
    assert [(s.name, s.shape) for s in result.inputs] == [("image", (1, 3, 224, 224))]
    (logits,) = result.outputs
    assert logits.name == "logits" and logits.shape == (1, 100) and logits.dtype == "float32"
    assert logits.min is not None and logits.max is not None and logits.min < logits.mean < logits.max  # type: ignore[operator]
    with pytest.raises(InvalidInputError, match="must have shape"):
        runner.run({"image": np.zeros((1, 3, 112, 112), np.float32)})


def test_load_npy_inputs(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(4, dtype=np.int64))
    arrays = load_npy_inputs([f"ids={tmp_path / 'a.npy'}"])
    np.testing.assert_array_equal(arrays["ids"], np.arange(4))
    for bad in ["ids", "=x.npy", f"ids={tmp_path / 'missing.npy'}"]:
        with pytest.raises(InvalidInputError):
            load_npy_inputs([bad])
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(InvalidInputError, match="cannot read"):
        load_npy_inputs([f"x={tmp_path / 'junk.npy'}"])
    with pytest.raises(InvalidInputError, match="twice"):
        load_npy_inputs([f"ids={tmp_path / 'a.npy'}", f"ids={tmp_path / 'a.npy'}"])


def test_batch_like_names() -> None:
    assert is_batch_like("batch_size", 2) and is_batch_like("N", 0) and is_batch_like(None, 0)
    assert not is_batch_like("seq", 0) and not is_batch_like(None, 1) and not is_batch_like("height", 0)
