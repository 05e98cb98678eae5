"""demo-vision: a classifier whose graph is a DAG, run by ONNX Runtime and by the CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from tierflow.cli import app
from tierflow.model.demo import vision
from tierflow.model.onnx_build import count_macs, with_input_shapes
from tierflow.runtime.session import SessionOptions, open_session


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return vision.build_model()


def test_build_is_deterministic_and_a_few_mb(tmp_path: Path) -> None:
    vision.build(tmp_path / "a.onnx")
    vision.build(tmp_path / "b.onnx")
    data = (tmp_path / "a.onnx").read_bytes()
    assert data == (tmp_path / "b.onnx").read_bytes()
    assert 1_000_000 < len(data) < 10_000_000


def test_passes_the_full_checker(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    inferred = with_input_shapes(model, {"image": [4, 3, 224, 224]})
    (logits,) = inferred.graph.output
    assert [d.dim_value for d in logits.type.tensor_type.shape.dim] == [4, 100]
    assert 1e8 < count_macs(model, {"image": [1, 3, 224, 224]}) < 2e9


def test_metadata_and_names(model: onnx.ModelProto) -> None:
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["tierflow.kind"] == "vision"
    assert meta["tierflow.num_classes"] == "100"
    produced = {out for node in model.graph.node for out in node.output}
    assert set(json.loads(meta["tierflow.blocks"])) <= produced
    blocks = {node.name.split("/")[0] for node in model.graph.node}
    assert blocks == {"stem", "inc1", "down1", "res1", "inc2", "down2", "res2", "skip", "head"}


def test_graph_is_a_dag_not_a_chain(model: onnx.ModelProto) -> None:
    produced = {out for node in model.graph.node for out in node.output}
    uses = Counter(name for node in model.graph.node for name in node.input if name in produced)
    fan_out = {name for name, n in uses.items() if n > 1}
    fan_in = [n.name for n in model.graph.node if sum(i in produced for i in n.input) > 1]
    assert "stem/out" in fan_out  # feeds inc1's four branches, its projection and the long skip
    assert uses["stem/out"] == 6
    assert {"inc1/concat", "inc2/concat", "res1/residual", "skip/add"} <= set(fan_in)
    concat = next(n for n in model.graph.node if n.name == "inc1/concat")
    assert len(concat.input) == 4


def test_runs_with_any_batch(model: onnx.ModelProto) -> None:
    session = open_session(model.SerializeToString(), SessionOptions(intra_op_threads=1))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    (logits,) = session.run(None, {"image": x})
    assert logits.shape == (2, 100) and np.isfinite(logits).all()
    assert logits.std() > 0.1
    (single,) = session.run(None, {"image": x[:1]})
    np.testing.assert_allclose(single[0], logits[0], rtol=1e-4, atol=1e-4)


def test_cli_run_demo_vision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    result = runner.invoke(app, ["run", "demo-vision", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "logits" in result.output and "1x100" in result.output and "provider=CPU" in result.output
    batch = tmp_path / "batch.npy"
    np.save(batch, np.zeros((3, 3, 224, 224), np.float32))
    result = runner.invoke(app, ["run", "demo-vision", "--input", f"image={batch}", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "3x100" in result.output and "in (given)" in result.output
