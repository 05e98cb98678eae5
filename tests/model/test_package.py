"""The .tfm container: manifest validation, hash checks, atomic writes, and `tierflow inspect`."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import assert_one_line_error, cli
from tierflow.errors import PackageError, UnknownTargetError
from tierflow.model.package import (
    MANIFEST_NAME,
    Manifest,
    Package,
    artifact_name,
    parse_manifest,
    sha256_hex,
    write_package,
)

ARTIFACTS = {"phone": b"phone-bytes" * 10, "cloud": b"cloud-bytes" * 40}


def manifest_doc(artifacts: dict[str, bytes] = ARTIFACTS) -> dict[str, Any]:
    targets = {
        name: {
            "device_class": name,
            "layers": ["embeddings", "layers.0", "exit_head"]
            if name == "phone"
            else ["embeddings", "layers.0", "layers.1", "final_head"],
            "precision": "int8" if name == "phone" else "fp32",
            "max_seq_len": 64,
            "artifact": artifact_name(name),
            "size_bytes": len(data),
            "sha256": sha256_hex(data),
            "inputs": ["input_ids"],
            "outputs": ["logits"],
        }
        for name, data in artifacts.items()
    }
    return {
        "format": "tierflow.package",
        "version": 1,
        "created_by": "tests",
        "model": {"name": "m", "kind": "causal-lm", "source_sha256": "0" * 64, "source_size_bytes": 1},
        "base": {"components": ["embeddings", "layers.0", "exit_head"], "parameters": 10},
        "edge_layers": {"components": ["layers.1", "final_head"], "parameters": 5},
        "cloud_layers": {"components": [], "parameters": 0},
        "targets": targets,
    }


def write(path: Path, doc: dict[str, Any] | None = None, artifacts: dict[str, bytes] = ARTIFACTS) -> Path:
    manifest = Manifest.model_validate(doc or manifest_doc(artifacts))
    return write_package(path, manifest, {artifact_name(n): d for n, d in artifacts.items()})


def raw_zip(path: Path, manifest: str | bytes, members: dict[str, bytes]) -> Path:
    """A package written by hand, bypassing every check (to build broken ones)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MANIFEST_NAME, manifest)
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_round_trip(tmp_path: Path) -> None:
    pkg = Package.open(write(tmp_path / "m.tfm"))
    assert list(pkg.manifest.targets) == ["phone", "cloud"]
    assert pkg.artifact("phone") == ARTIFACTS["phone"]
    assert pkg.artifact("cloud") == ARTIFACTS["cloud"]
    pkg.verify()
    assert pkg.manifest.targets["phone"].precision == "int8"


def test_unknown_target(tmp_path: Path) -> None:
    pkg = Package.open(write(tmp_path / "m.tfm"))
    with pytest.raises(UnknownTargetError, match="unknown target 'watch'.*phone, cloud"):
        pkg.artifact("watch")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.update(version=2), "manifest version 2 is not supported"),
        (lambda d: d.pop("version"), "manifest version None is not supported"),
        (lambda d: d.update(format="zip"), "not a tierflow package"),
        (lambda d: d["targets"]["phone"].update(precision="int4"), "targets.phone.precision"),
        (lambda d: d["targets"]["phone"].update(sha256="xyz"), "targets.phone.sha256"),
        (
            lambda d: d["targets"]["phone"].update(layers=["layers.9"]),
            "layers ['layers.9'] that no layer group",
        ),
        (lambda d: d["targets"]["phone"].update(artifact="../evil.onnx"), "invalid artifact name"),
        (lambda d: d["targets"]["cloud"].update(artifact=artifact_name("phone")), "used by two targets"),
        (lambda d: d.update(targets={}), "at least one target"),
        (lambda d: d.pop("base"), "base: Field required"),
        (lambda d: d.update(extra=1), "extra: Extra inputs are not permitted"),
    ],
)
def test_manifest_validation(change: Any, fragment: str) -> None:
    doc = manifest_doc()
    change(doc)
    with pytest.raises(PackageError) as err:
        parse_manifest(json.dumps(doc), "m.tfm")
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_manifest_not_json() -> None:
    with pytest.raises(PackageError, match="manifest is not valid JSON"):
        parse_manifest(b"{not json", "m.tfm")


def test_truncated_package(tmp_path: Path) -> None:
    path = write(tmp_path / "m.tfm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PackageError, match="corrupt or truncated package"):
        Package.open(path)


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "m.tfm"
    path.write_bytes(b"this is not a package at all")
    with pytest.raises(PackageError, match="corrupt or truncated"):
        Package.open(path)


def test_zip_without_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.tfm"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(PackageError, match="no manifest.json"):
        Package.open(path)


def test_missing_package(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="package not found"):
        Package.open(tmp_path / "nope.tfm")


def test_missing_artifact(tmp_path: Path) -> None:
    doc = manifest_doc()
    path = raw_zip(tmp_path / "m.tfm", json.dumps(doc), {artifact_name("cloud"): ARTIFACTS["cloud"]})
    pkg = Package.open(path)  # the manifest alone is fine
    assert pkg.artifact("cloud") == ARTIFACTS["cloud"]
    with pytest.raises(PackageError, match="artifact targets/phone.onnx of target phone is missing"):
        pkg.artifact("phone")
    with pytest.raises(PackageError, match="missing"):
        pkg.verify()


def test_tampered_artifact(tmp_path: Path) -> None:
    doc = manifest_doc()
    tampered = bytearray(ARTIFACTS["phone"])
    tampered[3] ^= 0xFF  # same size, one byte changed, and a zip CRC that matches the new bytes
    members = {artifact_name("phone"): bytes(tampered), artifact_name("cloud"): ARTIFACTS["cloud"]}
    pkg = Package.open(raw_zip(tmp_path / "m.tfm", json.dumps(doc), members))
    with pytest.raises(PackageError, match="target phone was modified"):
        pkg.artifact("phone")
    assert pkg.artifact("cloud") == ARTIFACTS["cloud"]


def test_bytes_flipped_inside_the_file(tmp_path: Path) -> None:
    """Editing the package file in place (the zip CRC no longer matches) is caught too."""
    path = write(tmp_path / "m.tfm")
    data = bytearray(path.read_bytes())
    at = data.find(ARTIFACTS["cloud"])
    data[at + 5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="cloud"):
        Package.open(path).artifact("cloud")


def test_write_refuses_mismatched_artifact_and_leaves_nothing(tmp_path: Path) -> None:
    manifest = Manifest.model_validate(manifest_doc())
    bad = {artifact_name("phone"): b"other bytes", artifact_name("cloud"): ARTIFACTS["cloud"]}
    with pytest.raises(PackageError, match="does not match"):
        write_package(tmp_path / "m.tfm", manifest, bad)
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_when_interrupted(tmp_path: Path) -> None:
    """A failure mid-write keeps the previous package and leaves no temporary file."""
    path = write(tmp_path / "m.tfm")
    before = path.read_bytes()

    manifest = Manifest.model_validate(manifest_doc())
    artifacts = {artifact_name(n): d for n, d in ARTIFACTS.items()}

    original = zipfile.ZipFile.writestr
    calls = {"n": 0}

    def failing(self: zipfile.ZipFile, name: Any, data: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        original(self, name, data, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zipfile.ZipFile, "writestr", failing)
        with pytest.raises(PackageError, match="cannot write the package to .*disk full"):
            write_package(path, manifest, artifacts)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tfm"]


# --- tierflow inspect --------------------------------------------------------------------------


def test_inspect_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "m.tfm")
    code, out, err = cli(capsys, monkeypatch, "inspect", str(path), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc["targets"]) == {"phone", "cloud"}
    for name, target in doc["targets"].items():
        assert target["size_bytes"] == len(ARTIFACTS[name])
        assert target["sha256"] == sha256_hex(ARTIFACTS[name])
        assert target["precision"] in ("int8", "fp32")
    assert doc["package"]["size_bytes"] == path.stat().st_size


def test_inspect_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "m.tfm")
    code, out, _ = cli(capsys, monkeypatch, "inspect", str(path))
    assert code == 0
    for fragment in ("phone", "cloud", "int8", "fp32", sha256_hex(ARTIFACTS["phone"])[:16], "edge_layers"):
        assert fragment in out


@pytest.mark.parametrize("breakage", ["truncated", "version", "tampered", "missing"])
def test_inspect_bad_packages(
    breakage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.tfm"
    doc = manifest_doc()
    members = {artifact_name(n): d for n, d in ARTIFACTS.items()}
    if breakage == "truncated":
        data = write(path).read_bytes()
        path.write_bytes(data[:100])
        fragment = "corrupt or truncated"
    elif breakage == "version":
        doc["version"] = 99
        raw_zip(path, json.dumps(doc), members)
        fragment = "manifest version 99 is not supported"
    elif breakage == "tampered":
        members[artifact_name("cloud")] = b"X" * len(ARTIFACTS["cloud"])
        raw_zip(path, json.dumps(doc), members)
        fragment = "target cloud was modified"
    else:
        del members[artifact_name("phone")]
        raw_zip(path, json.dumps(doc), members)
        fragment = "is missing"
    code, _, err = cli(capsys, monkeypatch, "inspect", str(path))
    assert_one_line_error(code, err, fragment)


def test_write_to_a_directory_or_unwritable_place(tmp_path: Path) -> None:
    manifest = Manifest.model_validate(manifest_doc())
    artifacts = {artifact_name(n): d for n, d in ARTIFACTS.items()}
    with pytest.raises(PackageError, match="is a directory"):
        write_package(tmp_path, manifest, artifacts)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PackageError, match="cannot write the package"):
        write_package(blocker / "sub" / "m.tfm", manifest, artifacts)
