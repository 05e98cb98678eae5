"""The compiler: every target from one model, measured fidelity, floors, bad configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tests.support.cli import assert_one_line_error, cli
from tests.support.tiny_pyramid import build_classifier, build_lm, save
from tierflow.compiler.compiler import CompileReport, compile_model
from tierflow.compiler.extract import SourceModel, pyramid_for
from tierflow.errors import ConfigError, FidelityError, InvalidModelError, ModelNotFoundError
from tierflow.model import lm_contract as lc
from tierflow.model.package import Package
from tierflow.model.pyramid import PyramidConfig, load_pyramid, pyramid_from_dict
from tierflow.model.registry import ASSETS
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.session import SessionOptions, open_session

FAST = {
    "fidelity": {"calibration_samples": 2, "samples": 2, "resolution": 32, "lm_window": 24, "lm_windows": 2}
}
ONE_THREAD = SessionOptions(intra_op_threads=1, providers=("CPUExecutionProvider",))


def config(**targets: dict[str, Any]) -> PyramidConfig:
    # random-weight models: argmax agreement is fragile, so the LM floor here is only a sanity floor
    base: dict[str, Any] = {"phone": {"max_seq_len": 32, "floor": {"top1": 0.5}}}
    for name, spec in targets.items():
        base[name] = {**base.get(name, {}), **spec}
    return pyramid_from_dict({**FAST, "targets": base})


def initializer_types(model_bytes: bytes) -> set[int]:
    return {t.data_type for t in onnx.load_from_string(model_bytes).graph.initializer}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(build_lm(layers=4, exit_layer=2), tmp_path_factory.mktemp("lm") / "tiny.onnx")


@pytest.fixture(scope="module")
def lm_package(tiny_lm: Path) -> tuple[CompileReport, Package]:
    out = tiny_lm.parent / "tiny.tfm"
    report = compile_model(tiny_lm, out, config=config())
    return report, Package.open(out)


# --- language models ---------------------------------------------------------------------------


def test_lm_every_target(lm_package: tuple[CompileReport, Package]) -> None:
    report, pkg = lm_package
    m = pkg.manifest
    assert report.written and list(m.targets) == ["phone", "edge", "cloud"]
    assert [t.precision for t in m.targets.values()] == ["int8", "fp16", "fp32"]
    assert m.model.kind == "causal-lm" and m.model.num_layers == 4 and m.model.exit_layer == 2
    assert m.targets["phone"].layers == ["embeddings", "layers.0", "layers.1", "exit_head"]
    assert "layers.3" in m.targets["edge"].layers and "final_head" in m.targets["cloud"].layers
    assert m.base.components == ["embeddings", "layers.0", "layers.1", "exit_head"]
    assert m.edge_layers.components == ["layers.2", "layers.3", "final_head"]
    # the groups split every weight of the source exactly once
    source = onnx.load(str(report.source))
    total = sum(
        int(np.prod(t.dims)) for t in source.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
    )
    assert m.base.parameters + m.edge_layers.parameters == total
    assert m.targets["phone"].max_seq_len == 32 and m.targets["cloud"].max_seq_len == 64
    assert m.targets["phone"].size_bytes <= 0.35 * m.targets["cloud"].size_bytes
    small, large, ratio = report.size_ratio() or ("", "", 1.0)
    assert (small, large) == ("phone", "cloud") and ratio <= 0.35


def test_lm_artifacts_are_what_they_claim(lm_package: tuple[CompileReport, Package]) -> None:
    _, pkg = lm_package
    phone, edge, cloud = (pkg.artifact(t) for t in ("phone", "edge", "cloud"))
    assert onnx.TensorProto.INT8 in initializer_types(phone)
    assert onnx.TensorProto.FLOAT16 in initializer_types(edge)
    assert onnx.TensorProto.FLOAT16 not in initializer_types(cloud)
    lm = CausalLM(open_session(phone, ONE_THREAD))
    assert lm.signature.num_layers == 2  # a valid contract LM of its own
    assert lc.EXIT_LOGITS not in lm.signature.output_names
    assert lm.max_seq_len == 32
    for data in (phone, edge, cloud):
        result = CausalLM(open_session(data, ONE_THREAD)).generate(
            "the cat", SamplingConfig(max_new_tokens=4)
        )
        assert len(result.new_ids) == 4 and result.text


def test_lm_fidelity_is_measured(lm_package: tuple[CompileReport, Package]) -> None:
    report, pkg = lm_package
    fid = {n: t.fidelity for n, t in pkg.manifest.targets.items()}
    for metrics in fid.values():
        assert {"top1", "top1_vs_full", "ppl", "ppl_fp32", "ppl_full", "ppl_ratio", "max_abs_error"} <= set(
            metrics
        )
    assert fid["cloud"]["max_abs_error"] == 0 and fid["cloud"]["top1"] == 1
    assert fid["edge"]["top1"] >= 0.95 and 0 < fid["edge"]["max_abs_error"] < 0.05
    assert fid["phone"]["max_abs_error"] > 0 and 0.5 <= fid["phone"]["top1"] <= 1
    # the phone's own FP32 counterpart is the early-exit model, not the full one
    assert fid["phone"]["ppl_fp32"] != fid["phone"]["ppl_full"]
    assert all("tokens of held-back text" in t.check for t in report.targets)


def test_early_exit_cut_matches_the_exit_head(tiny_lm: Path) -> None:
    """The cut FP32 phone graph computes exactly the source's exit_logits."""
    source = SourceModel.from_proto(onnx.load(str(tiny_lm)), "tiny")
    cut = pyramid_for(source).cut("phone", config().targets["phone"]).model
    full, phone = (CausalLM(open_session(m.SerializeToString(), ONE_THREAD)) for m in (source.model, cut))
    ids = np.array([[1, 5, 2, 7, 3]], np.int64)
    feeds: dict[str, np.ndarray] = {lc.INPUT_IDS: ids, lc.POSITION_IDS: np.arange(5)[None]}
    for i, (k, v) in enumerate(full.empty_cache()):
        feeds[lc.past_name(i, "key")], feeds[lc.past_name(i, "value")] = k, v
    (want,) = full.session.run([lc.EXIT_LOGITS], feeds)
    got, _ = phone.forward(ids, phone.empty_cache())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fidelity_floor_refuses_and_writes_nothing(tiny_lm: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.tfm"
    out.write_bytes(b"the previous package")
    cfg = config(phone={"floor": {"top1": 0.0, "max_abs_error": 0.0}})  # INT8 cannot be bit-exact
    with pytest.raises(FidelityError, match=r"\(phone: max_abs_error \S+ > 0\); nothing written") as err:
        compile_model(tiny_lm, out, config=cfg)
    report = err.value.report  # a declared attribute: the compiler's report, for the CLI to print
    assert isinstance(report, CompileReport)
    assert [t.name for t in report.failures] == ["phone"] and not report.written
    assert out.read_bytes() == b"the previous package"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tfm"]


def test_min_fidelity_cli_refuses(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(
        "fidelity: {samples: 1, lm_window: 16, lm_windows: 1}\ntargets: {phone: {floor: {top1: 0}}}\n"
    )
    out = tmp_path / "m.tfm"
    args = ("compile", str(tiny_lm), "-o", str(out), "--config", str(cfg), "--targets", "phone")
    code, stdout, err = cli(capsys, monkeypatch, *args, "--min-fidelity", "phone:top1=1,max_abs_error=0")
    assert_one_line_error(code, err, "below the fidelity floor (phone: ")
    assert "phone" in stdout and "✗" in stdout  # the table shows what was measured
    assert not out.exists()
    code, stdout, err = cli(capsys, monkeypatch, *args)
    assert code == 0, err
    assert "wrote" in stdout and Package.open(out).manifest.targets.keys() == {"phone"}


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"phone": {"layers": 9}}, "target phone asks for 9 layers; tiny has 4"),
        ({"phone": {"layers": 3}}, "no exit head after layer 3"),
        ({"edge": {"outputs": ["logits"]}}, "'outputs' cuts apply to non-LM models"),
    ],
)
def test_layers_that_do_not_exist(tiny_lm: Path, tmp_path: Path, spec: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        compile_model(tiny_lm, tmp_path / "m.tfm", config=config(**spec))
    assert list(tmp_path.iterdir()) == []


def test_cli_config_error_is_one_line(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text("targets:\n  phone:\n    layers: 12\n")
    code, _, err = cli(
        capsys, monkeypatch, "compile", str(tiny_lm), "-o", str(tmp_path / "m.tfm"), "-c", str(cfg)
    )
    assert_one_line_error(code, err, "asks for 12 layers")
    assert not (tmp_path / "m.tfm").exists()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("targets: [phone", "not valid YAML"),
        ("targets: {phone: {precision: int4}}", "targets.phone.precision"),
        ("targets: {phone: {colour: red}}", "targets.phone.colour: Extra inputs are not permitted"),
        ("targets: {watch: {layers: all}}", "targets.watch.device_class: Field required"),
        ("version: 2", "version: Input should be 1"),
        ("- a list", "expected a mapping"),
    ],
)
def test_bad_pyramid_yaml(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_pyramid(path)


def test_yaml_merges_over_the_default(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "targets:\n  phone: {max_resolution: 128}\n  edge: null\n"
        "  car: {device_class: car, precision: fp16}\n"
    )
    cfg = load_pyramid(path)
    assert list(cfg.targets) == ["phone", "cloud", "car"]
    assert cfg.targets["phone"].max_resolution == 128 and cfg.targets["phone"].precision == "int8"
    with pytest.raises(ConfigError, match="unknown target watch"):
        cfg.select(["phone", "watch"])


def test_lm_calibration_text(tiny_lm: Path, tmp_path: Path) -> None:
    text = "the cat sat on the mat and the dog ran fast " * 10
    report = compile_model(tiny_lm, tmp_path / "m.tfm", config=config(), targets=["phone"], calibration=text)
    assert report.targets[0].check == "2 x 24 tokens of given text"


def test_lm_without_tokenizer_uses_random_tokens(tmp_path: Path) -> None:
    model = save(build_lm(layers=2, exit_layer=1, vocab=64), tmp_path / "plain.onnx")
    report = compile_model(model, tmp_path / "m.tfm", config=config(), targets=["phone", "edge"])
    assert all("random tokens" in t.check for t in report.targets)


# --- image generator, vision models ------------------------------------------------------------


def test_image_generator_pyramid(tmp_path: Path) -> None:
    report = compile_model("random-image", tmp_path / "img.tfm", config=config())
    pkg = Package.open(tmp_path / "img.tfm")
    t = pkg.manifest.targets
    assert [t[n].max_resolution for n in ("phone", "edge", "cloud")] == [256, 1024, 2048]
    assert t["phone"].outputs == ["image"] and t["edge"].outputs == ["image"]
    assert set(t["cloud"].outputs) == {"image", "refined_image"}
    assert t["cloud"].layers == ["generator", "refiner"] and pkg.manifest.cloud_layers.components == [
        "refiner"
    ]
    assert pkg.manifest.cloud_layers.parameters > 0
    assert t["phone"].size_bytes <= 0.35 * t["cloud"].size_bytes
    phone = onnx.load_from_string(pkg.artifact("phone"))
    assert any(n.op_type == "QuantizeLinear" for n in phone.graph.node)  # static QDQ
    assert {p.key: p.value for p in phone.metadata_props}["tierflow.resolutions"] == "256"
    assert t["phone"].fidelity["psnr_db"] > 20 and t["edge"].fidelity["psnr_db"] > 40
    assert report.targets[0].check == "2 generated inputs at 32 px"


def test_foreign_vision_model(tmp_path: Path) -> None:
    model = save(build_classifier(), tmp_path / "classifier.onnx")
    report = compile_model(model, tmp_path / "c.tfm", config=config())
    m = Package.open(tmp_path / "c.tfm").manifest
    assert m.model.kind == "generic" and all(t.layers == ["graph"] for t in m.targets.values())
    assert m.base.components == ["graph"] and m.edge_layers.components == []
    assert all("top1" in t.fidelity for t in m.targets.values())
    assert report.targets[0].method == "static INT8 (QDQ)"


def test_foreign_model_cut_at_named_tensor(tmp_path: Path) -> None:
    model = save(build_classifier(), tmp_path / "classifier.onnx")
    compile_model(model, tmp_path / "c.tfm", config=config(phone={"outputs": ["features"]}))
    m = Package.open(tmp_path / "c.tfm").manifest
    assert m.targets["phone"].outputs == ["features"] and m.targets["phone"].layers == ["upto:features"]
    assert m.base.components == ["upto:features"] and m.edge_layers.components == ["graph"]
    with pytest.raises(ConfigError, match="tensor 'nope' does not exist"):
        compile_model(model, tmp_path / "d.tfm", config=config(phone={"outputs": ["nope"]}))
    with pytest.raises(ConfigError, match="has no layer pyramid"):
        compile_model(model, tmp_path / "d.tfm", config=config(phone={"layers": 2}))
    assert not (tmp_path / "d.tfm").exists()


def test_calibration_folder(tmp_path: Path) -> None:
    model = save(build_classifier(), tmp_path / "classifier.onnx")
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        np.savez(feeds / f"{i}.npz", pixels=rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    report = compile_model(model, tmp_path / "c.tfm", config=config(), calibration=feeds)
    assert report.targets[0].check == "3 given inputs"
    np.savez(feeds / "9.npz", image=np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ConfigError, match="missing: pixels; unknown: image"):
        compile_model(model, tmp_path / "d.tfm", config=config(), calibration=feeds)


def test_demo_vision(tmp_path: Path) -> None:
    compile_model("demo-vision", tmp_path / "v.tfm", config=config())
    m = Package.open(tmp_path / "v.tfm").manifest
    assert m.model.kind == "vision" and m.targets["phone"].fidelity["top1"] >= 0.5


# --- bad sources -------------------------------------------------------------------------------


def test_not_an_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
        compile_model(bad, tmp_path / "m.tfm")
    with pytest.raises(ModelNotFoundError):
        compile_model(tmp_path / "missing.onnx", tmp_path / "m.tfm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


# --- the bundled LM and an exported one ---------------------------------------------------------


def test_demo_lm(tmp_path: Path) -> None:
    # the trained LM is committed (model/assets): missing, it is a broken checkout or package, not a skip
    asset = ASSETS / "demo-lm.onnx"
    assert asset.is_file(), f"committed asset missing: {asset}"
    assert asset.stat().st_size > 1_000_000, f"committed asset truncated (a Git LFS pointer?): {asset}"
    report = compile_model("demo-lm", tmp_path / "lm.tfm", config=pyramid_from_dict(FAST))
    m = Package.open(tmp_path / "lm.tfm").manifest
    assert m.targets["phone"].layers[-1] == "exit_head"
    ratio = report.size_ratio()
    assert ratio is not None and ratio[2] <= 0.35


@pytest.mark.export
def test_exported_gpt2(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tierflow.compiler.export_hf import ExportOptions, export_hf

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=128)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    export_hf(tmp_path / "gpt2", tmp_path / "gpt2.onnx", ExportOptions(threads=1))
    report = compile_model(tmp_path / "gpt2.onnx", tmp_path / "g.tfm", config=config())
    m = Package.open(tmp_path / "g.tfm").manifest
    assert list(m.targets) == ["phone", "edge", "cloud"] and m.model.exit_layer is None
    ratio = report.size_ratio()
    assert ratio is not None and ratio[2] <= 0.35
