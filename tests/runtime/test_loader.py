"""tierflow.load(): real capabilities, target selection by policy, sessions, the cloud proxy."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tierflow
from tests.support.cli import cli
from tests.support.tiny_pyramid import build_lm, save
from tierflow.compiler.compiler import compile_model
from tierflow.errors import (
    ConfigError,
    InvalidInputError,
    PackageError,
    ProxyUnavailableError,
    UnknownTargetError,
    UnsupportedModelError,
)
from tierflow.model.package import MANIFEST_NAME, Manifest, Package
from tierflow.model.pyramid import pyramid_from_dict
from tierflow.runtime.capabilities import GB, Accelerator, Capabilities, detect
from tierflow.runtime.image import ImageResult
from tierflow.runtime.lm import GenerationResult
from tierflow.runtime.loader import (
    CLOUD_PROXY,
    SEED_POLICY,
    CloudProxy,
    Policy,
    TierSession,
    choose,
    load,
    load_policy,
    unmet,
)

FAST = {
    "fidelity": {"calibration_samples": 2, "samples": 1, "resolution": 32, "lm_window": 16, "lm_windows": 1}
}
CPU = ("CPUExecutionProvider",)
GPU = ("CUDAExecutionProvider", "CPUExecutionProvider")


def caps(
    memory_gb: float,
    cores: int = 8,
    providers: tuple[str, ...] = CPU,
    accel_units: int | None = None,
    battery: float | None = None,
    on_battery: bool | None = None,
    free_gb: float | None = None,
) -> Capabilities:
    accelerators = ()
    if accel_units is not None:
        accelerators = (Accelerator(providers[0], "GPU", "fake", accel_units, 16 * GB),)
    return Capabilities(
        memory_total_bytes=int(memory_gb * GB),
        memory_available_bytes=None if free_gb is None else int(free_gb * GB),
        cpu_cores=cores,
        providers=providers,
        accelerators=accelerators,
        battery_percent=battery,
        on_battery=on_battery,
    )


PHONE = caps(4, cores=4)  # 4 GB, CPU only
LAPTOP = caps(16, cores=8)  # 16 GB, CPU only
GPU_SERVER = caps(128, cores=32, providers=GPU, accel_units=132)
NPU_BOX = caps(16, cores=8, providers=("QNNExecutionProvider", "CPUExecutionProvider"), accel_units=8)


@pytest.fixture(scope="module")
def lm_tfm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lm")
    model = save(build_lm(layers=4, exit_layer=2), folder / "tiny.onnx")
    cfg = pyramid_from_dict({**FAST, "targets": {"phone": {"floor": {"top1": 0}}}})
    compile_model(model, folder / "tiny.tfm", config=cfg)
    return folder / "tiny.tfm"


@pytest.fixture(scope="module")
def manifest(lm_tfm: Path) -> Manifest:
    return Package.open(lm_tfm).manifest


@pytest.fixture(scope="module")
def image_tfm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("img") / "img.tfm"
    compile_model("random-image", out, config=pyramid_from_dict(FAST))
    return out


# --- capabilities --------------------------------------------------------------------------------


def test_detect_reads_this_machine() -> None:
    c = detect()
    assert c.memory_total_bytes > 0 and 0 < c.memory_free_bytes <= c.memory_total_bytes
    assert c.cpu_cores >= 1 and "CPUExecutionProvider" in c.providers
    if not c.has_accelerator:
        assert c.accelerator_cores == 0
    assert "memory=" in c.describe()


def test_accelerator_cores() -> None:
    assert GPU_SERVER.accelerator_cores == 132 and GPU_SERVER.has_accelerator
    assert caps(8, providers=GPU).accelerator_cores == 1  # a provider with no device detail counts once
    assert LAPTOP.accelerator_cores == 0 and not LAPTOP.has_accelerator
    assert NPU_BOX.has_provider("QNN") and not NPU_BOX.has_provider("CUDA")


# --- the default policy: most capable target that fits ----------------------------------------


@pytest.mark.parametrize(
    ("machine", "target"),
    [
        (GPU_SERVER, "cloud"),
        (LAPTOP, "edge"),
        (NPU_BOX, "edge"),
        (PHONE, "phone"),
        (caps(1, cores=1), "phone"),
    ],
)
def test_default_policy(manifest: Manifest, machine: Capabilities, target: str) -> None:
    decision = choose(manifest, machine)
    assert decision.target == target
    assert decision.reason.startswith(f"most capable target that fits: {target}")


def test_default_policy_explains_what_did_not_fit(manifest: Manifest) -> None:
    reason = choose(manifest, PHONE).reason
    assert "cloud needs 32 GB memory, has 4.0" in reason and "edge needs 8 GB memory" in reason


def test_no_target_fits_gives_the_cloud_proxy(manifest: Manifest) -> None:
    starved = caps(64, cores=16, free_gb=0.00001)  # ~10 kB free: not even the phone artifact fits
    decision = choose(manifest, starved)
    assert decision.target == CLOUD_PROXY and decision.reason.startswith("no local target fits")
    assert unmet(manifest.targets["phone"], starved)[0].startswith("needs")
    tiny = choose(manifest, caps(0.5, cores=1))
    assert tiny.target == CLOUD_PROXY and "phone needs 1 GB memory, has 0.5" in tiny.reason


# --- rule policies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "target"),
    [
        (PHONE, "phone"),  # < 8 GB memory
        (caps(4, providers=GPU, accel_units=132), "phone"),  # the first rule wins
        (NPU_BOX, "edge"),  # >= 4 accelerator cores
        (GPU_SERVER, "edge"),
        (LAPTOP, CLOUD_PROXY),  # enough memory, no accelerator: the cloud
        (caps(16, providers=("QNNExecutionProvider", "CPUExecutionProvider"), accel_units=2), CLOUD_PROXY),
    ],
)
def test_seed_rule_as_configuration(
    tmp_path: Path, manifest: Manifest, machine: Capabilities, target: str
) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(
        "require_fit: false\n"
        "rules:\n"
        "  - when: {memory_below_gb: 8}\n    target: phone\n"
        "  - when: {accelerator_cores_at_least: 4}\n    target: edge\n"
        "  - target: cloud-proxy\n"
    )
    policy = load_policy(path)
    assert policy == SEED_POLICY
    assert choose(manifest, machine, policy).target == target


def test_rules_with_fit_check_fall_through(manifest: Manifest) -> None:
    policy = load_policy(
        {
            "rules": [
                {"when": {"on_battery": True, "battery_below_pct": 20}, "target": "phone"},
                {"target": "cloud"},  # needs an accelerator: passed over on a laptop
                {"target": "watch"},  # not in the package: passed over
                {"target": "edge"},
            ]
        }
    )
    decision = choose(manifest, LAPTOP, policy)
    assert decision.target == "edge"
    assert "rule 2 (always): cloud needs an accelerator" not in decision.reason  # reasons of the winner only
    assert choose(manifest, caps(16, battery=12, on_battery=True), policy).target == "phone"
    assert choose(manifest, caps(16, battery=12, on_battery=False), policy).target == "edge"
    assert choose(manifest, GPU_SERVER, policy).target == "cloud"
    none = choose(manifest, LAPTOP, load_policy({"rules": [{"target": "watch"}]}))
    assert none.target == CLOUD_PROXY and "no target watch in the package" in none.reason


def test_policy_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifest: Manifest) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("rules: [{target: phone}]\n")
    monkeypatch.setenv("TIERFLOW_POLICY", str(path))
    assert choose(manifest, GPU_SERVER, load_policy(None)).target == "phone"


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ({"rules": [{"when": {"ram_below": 8}, "target": "phone"}]}, "rules.0.when.ram_below"),
        ({"rules": [{"when": {}}]}, "rules.0.target: Field required"),
        ({"memory_headroom": 0.5}, "memory_headroom"),
    ],
)
def test_bad_policy(source: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_policy(source)


def test_bad_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(tmp_path / "nope.yaml")
    (tmp_path / "p.yaml").write_text("rules: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_policy(tmp_path / "p.yaml")


# --- sessions ----------------------------------------------------------------------------------


def test_load_is_exported(lm_tfm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERFLOW_CLOUD", raising=False)
    session = tierflow.load(lm_tfm, capabilities=PHONE, threads=1)
    assert isinstance(session, TierSession) and session.target == "phone"
    proxy = tierflow.load(lm_tfm, target=CLOUD_PROXY)
    with pytest.raises(ProxyUnavailableError, match="no cloud node configured"):
        proxy.generate("the cat")


@pytest.mark.parametrize(("machine", "target"), [(PHONE, "phone"), (LAPTOP, "edge"), (GPU_SERVER, "cloud")])
def test_every_target_generates(lm_tfm: Path, machine: Capabilities, target: str) -> None:
    session = load(lm_tfm, capabilities=machine, threads=1)
    assert isinstance(session, TierSession) and session.target == target
    # a faked CUDA does not exist here: the session runs on what this ONNX Runtime really has
    assert session.provider == "CPUExecutionProvider"
    result = session.generate("the cat sat", max_new_tokens=4)
    assert isinstance(result, GenerationResult) and len(result.new_ids) == 4
    assert session.spec.precision == {"phone": "int8", "edge": "fp16", "cloud": "fp32"}[target]


def test_run_feeds(lm_tfm: Path) -> None:
    session = load(lm_tfm, target="phone", threads=1)
    assert isinstance(session, TierSession)
    feeds = {"input_ids": np.array([[1, 2, 3]], np.int64), "position_ids": np.array([[0, 1, 2]], np.int64)}
    for i in range(2):  # the phone target has the first two layers only
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, 2, 0, 16), np.float32)
    out = session.run(feeds)
    assert out["logits"].shape == (1, 3, 17) and out["present.1.key"].shape == (1, 2, 3, 16)
    del feeds["input_ids"]
    with pytest.raises(InvalidInputError, match="missing input 'input_ids'"):
        session.run(feeds)
    with pytest.raises(InvalidInputError, match="unknown generation option"):
        session.generate("the cat", colour="red")


def test_forced_target_and_unknown_target(lm_tfm: Path) -> None:
    session = load(lm_tfm, capabilities=PHONE, target="cloud", threads=1)
    assert session.target == "cloud" and session.decision == "target cloud requested"
    with pytest.raises(UnknownTargetError, match="unknown target 'watch'"):
        load(lm_tfm, target="watch")


def test_cloud_proxy_has_the_same_interface(lm_tfm: Path) -> None:
    starved = caps(64, cores=16, free_gb=0.00001)
    proxy = load(lm_tfm, capabilities=starved)
    assert isinstance(proxy, CloudProxy) and proxy.target == CLOUD_PROXY and proxy.provider is None
    with pytest.raises(ProxyUnavailableError, match="no cloud node configured"):
        proxy.generate("the cat")
    with pytest.raises(ProxyUnavailableError, match="no cloud node configured"):
        proxy.run({})
    assert isinstance(load(lm_tfm, target=CLOUD_PROXY), CloudProxy)


def test_tampered_artifact_is_refused_on_load(lm_tfm: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tfm"
    with zipfile.ZipFile(lm_tfm) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "targets/edge.onnx":
                data = data[:-8] + bytes(8)
            dst.writestr(item, data)
    assert isinstance(load(bad, target="phone", threads=1), TierSession)  # other targets still load
    with pytest.raises(PackageError, match="target edge was modified"):
        load(bad, capabilities=LAPTOP)


def test_unknown_manifest_version_is_refused(lm_tfm: Path, tmp_path: Path) -> None:
    bad = tmp_path / "v9.tfm"
    with zipfile.ZipFile(lm_tfm) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == MANIFEST_NAME:
                data = json.dumps({**json.loads(data), "version": 9}).encode()
            dst.writestr(item, data)
    with pytest.raises(PackageError, match="manifest version 9 is not supported"):
        load(bad)


def test_image_targets(image_tfm: Path) -> None:
    phone = load(image_tfm, capabilities=PHONE, threads=1)
    assert phone.target == "phone"
    result = phone.generate("a red car", resolution=64, seed=1)
    assert isinstance(result, ImageResult) and result.width == 64 and not result.refined
    with pytest.raises(InvalidInputError, match="target phone makes images up to 256 px; asked for 512"):
        phone.generate("a red car", resolution=512)
    cloud = load(image_tfm, target="cloud", threads=1)
    refined = cloud.generate("a red car", resolution=64, seed=1)
    assert isinstance(refined, ImageResult) and refined.refined  # the cloud target refines by default
    assert not np.array_equal(refined.pixels, result.pixels)


def test_vision_model_runs_but_does_not_generate(tmp_path: Path) -> None:
    compile_model("demo-vision", tmp_path / "v.tfm", config=pyramid_from_dict(FAST), targets=["phone"])
    session = load(tmp_path / "v.tfm", target="phone", threads=1)
    assert isinstance(session, TierSession)
    with pytest.raises(UnsupportedModelError, match="no generate"):
        session.generate("hello")


# --- tierflow run MODEL.tfm ----------------------------------------------------------------------


def test_cli_run_package(
    lm_tfm: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = cli(
        capsys, monkeypatch, "run", str(lm_tfm), "--target", "edge", "-p", "the cat", "-n", "3"
    )
    assert code == 0, err
    assert out.startswith("the cat")
    assert "target=edge provider=CPU precision=fp16" in err and "new_tokens=3" in err


def test_cli_run_image_package(
    image_tfm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    png = tmp_path / "x.png"
    args = ("run", str(image_tfm), "--target", "phone", "-p", "a red car", "-r", "64", "-o", str(png))
    code, out, err = cli(capsys, monkeypatch, *args)
    assert code == 0, err
    assert "target=phone" in err and "resolution=64x64" in out and png.stat().st_size > 0
    code, _, err = cli(capsys, monkeypatch, "run", str(image_tfm), "--target", "phone", "-r", "512")
    assert code == 2 and "makes images up to 256 px" in err


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("--target", "watch"), 2, "unknown target 'watch'"),
        (("--target", "cloud-proxy"), 1, "no cloud node configured"),
    ],
)
def test_cli_run_package_errors(
    lm_tfm: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    code: int,
    fragment: str,
) -> None:
    got, _, err = cli(capsys, monkeypatch, "run", str(lm_tfm), *args, "-p", "the cat")
    assert got == code and "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("target=")]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in err, err


def test_cli_run_corrupt_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.tfm"
    bad.write_bytes(b"PK\x03\x04 truncated")
    code, _, err = cli(capsys, monkeypatch, "run", str(bad), "-p", "x")
    assert code == 2 and err.count("\n") == 1 and "corrupt or truncated package" in err


def test_policy_default_is_not_rules() -> None:
    assert Policy().rules == () and Policy().require_fit
