"""The split papers' networks in plain PyTorch: torchvision's architectures, exported with their blocks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tierflow.bench.paper_models import PAPER_MODELS, build_module, cached_path, ensure_paper_model
from tierflow.errors import MissingExtraError, ModelNotFoundError

# torchvision's parameter counts (its model documentation): the same architecture has the same count
TORCHVISION_PARAMETERS = {"alexnet": 61_100_840, "resnet18": 11_689_512, "mobilenetv2": 3_504_872}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TIERFLOW_HOME", str(tmp_path))
    return tmp_path


def test_without_torch_building_one_says_which_extra_to_install(home: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(MissingExtraError, match="torch.*export"):
        ensure_paper_model("resnet18")


def test_an_unknown_paper_model_is_named() -> None:
    with pytest.raises(ModelNotFoundError, match="alexnet, resnet18, mobilenetv2"):
        ensure_paper_model("vgg16")


@pytest.mark.export
@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_the_architectures_are_torchvisions(name: str) -> None:
    pytest.importorskip("torch")
    module = build_module(name)
    assert sum(p.numel() for p in module.parameters()) == TORCHVISION_PARAMETERS[name]


@pytest.mark.export
def test_an_exported_model_runs_as_in_torch_and_is_cut_at_its_blocks(home: Path) -> None:
    torch = pytest.importorskip("torch")
    from tierflow.profiling.graph_builder import build_unit_graph
    from tierflow.runtime.session import SessionOptions
    from tierflow.runtime.stages import StageRunner

    path = ensure_paper_model("resnet18")
    assert path == cached_path("resnet18") and path.is_file()
    assert ensure_paper_model("resnet18") == path  # cached: not exported again
    proto = onnx.load(str(path))
    units = [u.name for u in build_unit_graph(proto).units]
    assert units == ["stem", *(f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)), "avgpool", "fc"]
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    got = StageRunner(proto, SessionOptions(intra_op_threads=1)).run({"image": image}, ["logits"])["logits"]
    with torch.no_grad():
        want = build_module("resnet18")(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
