"""Bundled models, addressable by name wherever a model path is accepted.

``demo-lm`` ships inside the package (it is trained, so it is committed); ``demo-image`` is
assembled on first use (about a second) from the trained components committed under
``assets/text_to_image/``; ``random-image`` and ``demo-vision`` are built from a fixed seed on first
use (under a second). Built models go into the tierflow home folder.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tierflow.errors import ModelNotFoundError
from tierflow.types.models import ModelKind

ASSETS = Path(__file__).parent / "assets"


def tierflow_home() -> Path:
    """Where tierflow keeps built models and caches (``$TIERFLOW_HOME``, default ``~/.cache/tierflow``)."""
    return Path(os.environ.get("TIERFLOW_HOME", Path.home() / ".cache" / "tierflow"))


@dataclass(frozen=True)
class BundledModel:
    name: str
    kind: ModelKind
    description: str
    asset: str | None = None  # file under ASSETS
    builder: str | None = None  # "module:function(path)" that writes the model
    version: str = "1"

    def path(self) -> Path:
        if self.asset is not None:
            return ASSETS / self.asset
        return tierflow_home() / "models" / f"{self.name}-v{self.version}.onnx"

    def ensure(self) -> Path:
        """The model's path, building it first if it is built on demand."""
        path = self.path()
        if path.is_file():
            return path
        if self.builder is None:
            raise ModelNotFoundError(f"bundled model {self.name} is missing from the package: {path}")
        module_name, func_name = self.builder.split(":")
        build: Callable[[Path], None] = getattr(importlib.import_module(module_name), func_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        build(tmp)
        tmp.replace(path)  # atomic: a crash never leaves a half-written model under the real name
        return path


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            "demo-lm",
            ModelKind.CAUSAL_LM,
            "6-layer decoder-only transformer with KV cache and an early-exit head, trained on Python's docs",
            asset="demo-lm.onnx",
        ),
        BundledModel(
            "demo-image",
            ModelKind.IMAGE_GENERATOR,
            "text-to-image trained on rendered scenes: flow matching at 64 px, upsamplers to 2048 px, "
            "a cloud refiner",
            builder="tierflow.model.text_to_image:build",
            version="2",  # bump when model/assets/text_to_image/ is retrained
        ),
        BundledModel(
            "random-image",
            ModelKind.IMAGE_GENERATOR,
            "latent image generator (256..2048 px) with an optional refiner, random weights: the "
            "structure and cost of one, for split planning and plumbing tests",
            builder="tierflow.model.demo.image:build",
        ),
        BundledModel(
            "crack-edge",
            ModelKind.CRACK_DETECTOR,
            "crack detector for the edge (inspection): crack pixels and a per-frame score, trained on "
            "rendered pipes and walls",
            asset="crack_edge.onnx",
        ),
        BundledModel(
            "crack-cloud",
            ModelKind.CRACK_DETECTOR,
            "the larger, more accurate crack detector the edge's hard examples go to",
            asset="crack_cloud.onnx",
        ),
        BundledModel(
            "demo-vision",
            ModelKind.VISION,
            "image classifier with branches and skip connections (a DAG); random weights",
            builder="tierflow.model.demo.vision:build",
        ),
    )
}


def resolve_model(name_or_path: str | Path) -> Path:
    """A bundled model name or a path -> an existing file path."""
    key = str(name_or_path)
    if key in BUNDLED:
        return BUNDLED[key].ensure()
    path = Path(key)
    if not path.exists():
        names = ", ".join(BUNDLED)
        raise ModelNotFoundError(f"no such model file or bundled model: {key} (bundled: {names})")
    if not path.is_file():
        raise ModelNotFoundError(f"{key} is not a file")
    return path


def kind_of(name_or_path: str | Path) -> ModelKind:
    """What a bundled name, a ``.tfm`` package or an ONNX file is (generic when it does not say)."""
    key = str(name_or_path)
    if key in BUNDLED:
        return BUNDLED[key].kind
    from tierflow.model import metadata as md  # onnx is heavy: only when a file must be read

    path = resolve_model(key)
    if path.suffix == ".tfm":
        from tierflow.model.package import Package

        declared = Package.open(path).manifest.model.kind
        return next((k for k in ModelKind if k.value == declared), ModelKind.GENERIC)
    import onnx

    return md.kind(onnx.load(str(path), load_external_data=False)) or ModelKind.GENERIC
