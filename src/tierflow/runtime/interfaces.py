"""What ``tierflow.load`` returns: one protocol per kind of model, met by a local target and the cloud proxy.

* :class:`TextModel` -- a language model: ``generate(prompt, ...)`` returns a :class:`GenerationResult`.
* :class:`ImageModel` -- an image generator: ``generate(prompt, ...)`` returns an :class:`ImageResult`.
* :class:`GenericModel` -- any other model (a vision classifier, a foreign ONNX file): ``run(feeds)``.

Every kind also has ``run(feeds)`` (the artifact itself, all outputs by name) and ``describe()``.
``kind`` tells them apart, so a type checker narrows :data:`LoadedModel` with a plain
``if model.kind is ModelKind.CAUSAL_LM:`` -- no ``isinstance`` at the call site::

    model = tierflow.load("lm.tfm")
    if model.kind is ModelKind.CAUSAL_LM:
        print(model.generate("Once upon a time").text)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, Protocol, Unpack

import numpy as np

from tierflow.runtime.image import ImageResult
from tierflow.runtime.lm import GenerationResult, SamplingConfig, SamplingOptions
from tierflow.types import ModelKind

TextKind = Literal[ModelKind.CAUSAL_LM]
ImageKind = Literal[ModelKind.IMAGE_GENERATOR]
GenericKind = Literal[ModelKind.VISION, ModelKind.GENERIC]


class Model(Protocol):
    """What every loaded model has, whatever its kind and wherever it runs."""

    @property
    def kind(self) -> ModelKind: ...

    @property
    def target(self) -> str:
        """The package target that runs it (``cloud-proxy``: the cloud node does)."""
        ...

    @property
    def decision(self) -> str:
        """One line: why the loader chose this target."""
        ...

    @property
    def provider(self) -> str | None:
        """The execution provider that runs it (None: a cloud proxy without a cloud node)."""
        ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the artifact on ``feeds`` (every input, by name); all outputs by name."""
        ...

    def describe(self) -> str:
        """One line: target, provider (and precision, for a local target)."""
        ...


class TextModel(Model, Protocol):
    """A language model."""

    @property
    def kind(self) -> TextKind: ...

    def generate(
        self,
        prompt: str,
        config: SamplingConfig | None = None,
        *,
        on_text: Callable[[str], None] | None = None,
        **options: Unpack[SamplingOptions],
    ) -> GenerationResult:
        """Continue ``prompt``; ``options`` replace fields of ``config`` (default: ``SamplingConfig()``),
        ``on_text`` receives the text as it grows."""
        ...


class ImageModel(Model, Protocol):
    """An image generator."""

    @property
    def kind(self) -> ImageKind: ...

    def generate(
        self,
        prompt: str | None = None,
        *,
        resolution: int | None = None,
        refine: bool | None = None,
        seed: int | None = None,
    ) -> ImageResult:
        """Paint ``prompt`` (None: unconditioned) at ``resolution`` pixels a side (default: up to 256,
        within the target's limit); ``refine`` None lets the target decide (the cloud target refines)."""
        ...


class GenericModel(Model, Protocol):
    """Any other model: run it on its inputs."""

    @property
    def kind(self) -> GenericKind: ...


LoadedModel = TextModel | ImageModel | GenericModel
