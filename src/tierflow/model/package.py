"""The unified model package (``.tfm``): one file holding every target of one model.

Container: a zip archive (stdlib :mod:`zipfile`) with

* ``manifest.json`` -- the versioned manifest below (schema in docs/PACKAGE.md);
* ``targets/<name>.onnx`` -- one ONNX artifact per target, stored uncompressed.

The manifest is validated on open; an unknown ``version`` is refused. Every
artifact carries its size and SHA-256 in the manifest and is checked each time
it is read, so a missing or modified artifact is a :class:`PackageError`, never
a model that silently runs different weights. Packages are written to a
temporary file next to the destination and renamed into place, so a crash or a
refusal never leaves a half-written package under the real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tierflow.errors import PackageError, UnknownTargetError
from tierflow.model.pyramid import Precision, Requirements, first_error

FORMAT = "tierflow.package"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
ARTIFACT_DIR = "targets/"
SUFFIX = ".tfm"

_SHA256 = r"^[0-9a-f]{64}$"
_ARTIFACT_NAME = re.compile(r"^targets/[A-Za-z0-9_.-]+\.onnx$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelInfo(_Strict):
    """The one source model the package was compiled from."""

    name: str
    kind: str  # a tierflow.types.ModelKind; str so that a newer kind still reads (as generic)
    source_sha256: str = Field(pattern=_SHA256)
    source_size_bytes: int = Field(ge=0)
    num_layers: int | None = None  # LMs
    exit_layer: int | None = None  # LMs with an early-exit head: layers before it
    max_seq_len: int | None = None  # LMs: the source's own context
    max_resolution: int | None = None  # image generators: the source's largest side


class LayerGroup(_Strict):
    """A named part of the pyramid: its components and how many weights they hold."""

    components: list[str]
    parameters: int = Field(ge=0)  # weight elements (unique initializers) in these components


class TargetManifest(_Strict):
    """One target: what it keeps, and its artifact."""

    device_class: str
    layers: list[str]  # active components, each from base / edge_layers / cloud_layers
    precision: Precision
    max_seq_len: int | None = None
    max_resolution: int | None = None
    artifact: str  # member name inside the package
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256)
    inputs: list[str]
    outputs: list[str]
    requires: Requirements = Requirements()
    fidelity: dict[str, float] = {}  # measured by the compiler against the FP32 reference
    quality: str = ""  # one line: what this target keeps and gives up


class Manifest(_Strict):
    format: Literal["tierflow.package"] = "tierflow.package"
    version: Literal[1] = 1
    created_by: str
    model: ModelInfo
    base: LayerGroup  # the shared backbone every target runs
    edge_layers: LayerGroup  # added from the edge up
    cloud_layers: LayerGroup  # cloud-only layers (for example the image refiner)
    targets: dict[str, TargetManifest]  # least to most capable

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if not self.targets:
            raise ValueError("a package needs at least one target")
        groups = (self.base, self.edge_layers, self.cloud_layers)
        known = {c for group in groups for c in group.components}
        artifacts: set[str] = set()
        for name, target in self.targets.items():
            unknown = [c for c in target.layers if c not in known]
            if unknown:
                raise ValueError(f"target {name} uses layers {unknown} that no layer group declares")
            if not _ARTIFACT_NAME.match(target.artifact):
                raise ValueError(f"target {name} has an invalid artifact name '{target.artifact}'")
            if target.artifact in artifacts:
                raise ValueError(f"artifact '{target.artifact}' is used by two targets")
            artifacts.add(target.artifact)
        return self

    def target(self, name: str) -> TargetManifest:
        if name not in self.targets:
            raise UnknownTargetError(f"unknown target '{name}' (this package has {', '.join(self.targets)})")
        return self.targets[name]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def artifact_name(target: str) -> str:
    return f"{ARTIFACT_DIR}{target}.onnx"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_manifest(raw: bytes | str, label: str = "package") -> Manifest:
    """Validate a manifest document; every problem is a one-line :class:`PackageError`."""
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{label}: manifest is not valid JSON ({_reason(exc)})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PackageError(f"{label}: not a tierflow package (manifest format is not '{FORMAT}')")
    version = doc.get("version")
    if version != MANIFEST_VERSION:
        raise PackageError(
            f"{label}: manifest version {version!r} is not supported "
            f"(this tierflow reads version {MANIFEST_VERSION})"
        )
    try:
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        raise PackageError(f"{label}: invalid manifest: {first_error(exc)}") from exc


class Package:
    """An opened ``.tfm`` file. Artifacts are read (and hash-checked) on demand."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path) -> Package:
        path = Path(path)
        if not path.is_file():
            raise PackageError(f"package not found: {path}")
        try:
            with zipfile.ZipFile(path) as zf:
                try:
                    raw = zf.read(MANIFEST_NAME)
                except KeyError:
                    raise PackageError(f"{path}: not a tierflow package (no {MANIFEST_NAME})") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
            raise PackageError(f"{path}: corrupt or truncated package ({_reason(exc)})") from exc
        return cls(path, parse_manifest(raw, str(path)))

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def artifact(self, target: str) -> bytes:
        """The target's ONNX bytes, after checking they are exactly what the manifest records."""
        spec = self.manifest.target(target)
        try:
            with zipfile.ZipFile(self.path) as zf:
                try:
                    data = zf.read(spec.artifact)
                except KeyError:
                    raise PackageError(
                        f"{self.path}: artifact {spec.artifact} of target {target} is missing"
                    ) from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:  # includes a bad CRC
            raise PackageError(f"{self.path}: artifact {spec.artifact} is corrupt ({_reason(exc)})") from exc
        if len(data) != spec.size_bytes or sha256_hex(data) != spec.sha256:
            raise PackageError(
                f"{self.path}: artifact {spec.artifact} of target {target} was modified "
                "(sha256 does not match the manifest)"
            )
        return data

    def verify(self) -> None:
        """Check every artifact; raise PackageError on the first bad one."""
        for name in self.manifest.targets:
            self.artifact(name)


def write_package(path: str | Path, manifest: Manifest, artifacts: Mapping[str, bytes]) -> Path:
    """Write ``manifest`` and ``artifacts`` (member name -> bytes) to ``path`` atomically."""
    path = Path(path)
    for name, spec in manifest.targets.items():
        data = artifacts.get(spec.artifact)
        if data is None:
            raise PackageError(f"no artifact given for target {name} ({spec.artifact})")
        if len(data) != spec.size_bytes or sha256_hex(data) != spec.sha256:
            raise PackageError(f"artifact of target {name} does not match its manifest entry")
    if path.is_dir():
        raise PackageError(f"cannot write the package: {path} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PackageError(f"cannot write the package to {path}: {exc.strerror or exc}") from exc
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            zf.writestr(MANIFEST_NAME, manifest.to_json(), compress_type=zipfile.ZIP_DEFLATED)
            for spec in manifest.targets.values():
                # stored, not deflated: sizes in the manifest are what a device downloads and maps
                zf.writestr(spec.artifact, artifacts[spec.artifact], compress_type=zipfile.ZIP_STORED)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise PackageError(f"cannot write the package to {path}: {exc.strerror or exc}") from exc
        raise
    return path


def summary(package: Package) -> dict[str, Any]:
    """The manifest as JSON-ready data, plus the package's own path and size."""
    doc = package.manifest.model_dump(mode="json")
    doc["package"] = {"path": str(package.path), "size_bytes": package.size_bytes}
    return doc


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
