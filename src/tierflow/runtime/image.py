"""Image generation on ONNX Runtime for models with the latent image-generator contract of ``random-image``.

The contract (see :mod:`tierflow.model.demo.image`):

inputs
  ``noise``  float32 [1, latent_channels, h, w]  -- a latent at 1/``latent_factor`` of the output side
  ``cond``   float32 [1, cond_dim]               -- a text embedding (zeros = unconditioned)
outputs
  ``image``  float32 [1, 3, H, W] in [-1, 1]
  ``refined_image`` (optional, the ``tierflow.refiner_output`` metadata) -- the refiner stage

A generator without the refiner output (a phone target, say) still runs; asking
it to refine is an :class:`~tierflow.errors.InvalidInputError`.

ONNX Runtime executes every node of a graph whatever outputs are asked for, so
an unrefined image from a model that has a refiner runs on a second session of
the graph cut before the refiner (made on first use, when the model itself is
known); otherwise the refiner's cost would be paid for nothing.

The text encoder here, :func:`encode_prompt`, is a stand-in for a real one
(CLIP, T5): it hashes words and word pairs into a fixed random direction
each and sums them. Equal prompts give equal vectors, prompts sharing words
give similar vectors, and it needs no download -- that is all a generator with
random weights can use.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tierflow.errors import InvalidInputError, UnsupportedModelError
from tierflow.model import metadata as md
from tierflow.model.partition import GraphCutter
from tierflow.runtime.image_result import ImageResult, png_bytes, to_uint8
from tierflow.runtime.session import SessionOptions, active_provider, metadata, open_session
from tierflow.types import ModelKind

__all__ = ["ImageGenerator", "ImageResult", "encode_prompt", "is_image_generator", "png_bytes", "to_uint8"]

NOISE = "noise"
COND = "cond"
IMAGE = "image"
DEFAULT_REFINER_OUTPUT = "refined_image"
DEFAULT_LATENT_FACTOR = 8
MIN_RESOLUTION = 64
MAX_RESOLUTION = 4096  # 16 Mpx: the full-resolution activations of random-image then take ~1 GB each

_WORD = re.compile(r"\w+")


def encode_prompt(prompt: str | None, dim: int = 64) -> np.ndarray:
    """A deterministic [1, dim] float32 embedding of ``prompt`` (None or blank -> all zeros).

    Each lower-cased word, and each pair of neighbouring words (weight 1/2),
    picks a Gaussian direction seeded by its BLAKE2 hash; the sum is scaled to
    unit variance per element.
    """
    words = _WORD.findall(prompt.lower()) if prompt else []
    if not words:
        return np.zeros((1, dim), np.float32)
    features = [(w, 1.0) for w in words] + [(f"{a} {b}", 0.5) for a, b in zip(words, words[1:], strict=False)]
    vec = np.zeros(dim, np.float64)
    for feature, weight in features:
        seed = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
        vec += weight * np.random.default_rng(seed).standard_normal(dim)
    vec *= np.sqrt(dim) / np.linalg.norm(vec)
    return vec.astype(np.float32)[None, :]


class ImageGenerator:
    """Drives an ONNX image generator: prompt + seed + resolution -> :class:`ImageResult`."""

    def __init__(self, session: ort.InferenceSession, model: onnx.ModelProto | None = None) -> None:
        """``session`` runs ``model``; without ``model``, unrefined images also pay for the refiner."""
        self.session = session
        self._model = model
        self._base_session: ort.InferenceSession | None = None
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        if NOISE not in inputs or COND not in inputs or IMAGE not in outputs:
            have = ", ".join(inputs)
            raise UnsupportedModelError(
                f"not an image generator: needs inputs {NOISE}, {COND} and output {IMAGE} (inputs: {have})"
            )
        noise_shape, cond_shape = inputs[NOISE].shape, inputs[COND].shape
        if len(noise_shape) != 4 or not isinstance(noise_shape[1], int) or len(cond_shape) != 2 \
                or not isinstance(cond_shape[1], int):
            raise UnsupportedModelError(
                f"image generator inputs must be noise [1, C, h, w], cond [1, D]: {noise_shape}, {cond_shape}"
            )
        meta = metadata(session)
        self.latent_channels: int = noise_shape[1]
        self.cond_dim: int = cond_shape[1]
        self.latent_factor = md.latent_factor(meta) or DEFAULT_LATENT_FACTOR
        refiner = md.refiner_output(meta) or DEFAULT_REFINER_OUTPUT
        self.refiner_output: str | None = refiner if refiner in outputs else None
        self.resolutions = tuple(md.resolutions(meta))

    @classmethod
    def open(cls, model: str | Path | bytes, options: SessionOptions | None = None) -> ImageGenerator:
        session = open_session(model, options)  # first: it gives the one-line error for a bad file
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
        return cls(session, proto)

    def session_for(self, refine: bool) -> ort.InferenceSession:
        """The full session to refine; else, when the model is known, one of the graph without the refiner."""
        if refine or self.refiner_output is None or self._model is None:
            return self.session
        if self._base_session is None:
            base = GraphCutter(self._model).extract([NOISE, COND], [IMAGE])
            full = self.session.get_session_options()
            options = SessionOptions(intra_op_threads=full.intra_op_num_threads,
                                     providers=tuple(self.session.get_providers()))
            self._base_session = open_session(base.SerializeToString(), options)
        return self._base_session

    @property
    def has_refiner(self) -> bool:
        return self.refiner_output is not None

    @property
    def provider(self) -> str:
        return active_provider(self.session)

    def check_resolution(self, resolution: int) -> int:
        """``resolution`` if the generator can make it, else a one-line :class:`InvalidInputError`."""
        if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
            raise InvalidInputError(f"resolution must be an integer number of pixels, got {resolution!r}")
        if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
            raise InvalidInputError(
                f"resolution {resolution} is out of range: {MIN_RESOLUTION}..{MAX_RESOLUTION} px"
            )
        if resolution % self.latent_factor:
            raise InvalidInputError(
                f"resolution {resolution} is not a multiple of {self.latent_factor} (the latent factor)"
            )
        return int(resolution)

    def generate(
        self, prompt: str | None, resolution: int, refine: bool = False, seed: int | None = None
    ) -> ImageResult:
        """Paint ``prompt`` (None: unconditioned) at ``resolution`` x ``resolution`` pixels."""
        resolution = self.check_resolution(resolution)
        if refine and self.refiner_output is None:
            raise InvalidInputError("this image generator has no refiner stage; run it without refine")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % 2**63)  # type: ignore[operator]
        side = resolution // self.latent_factor
        noise = np.random.default_rng(seed).standard_normal(
            (1, self.latent_channels, side, side), dtype=np.float32
        )
        feeds = {NOISE: noise, COND: encode_prompt(prompt, self.cond_dim)}
        output = self.refiner_output if refine and self.refiner_output else IMAGE
        session = self.session_for(refine)
        start = time.perf_counter()
        (image,) = session.run([output], feeds)
        elapsed = time.perf_counter() - start
        if image.shape != (1, 3, resolution, resolution):
            raise UnsupportedModelError(
                f"image generator returned shape {list(image.shape)} for resolution {resolution}"
            )
        return ImageResult(
            pixels=to_uint8(image), prompt=prompt, resolution=resolution, refined=refine, seed=seed,
            provider=active_provider(session), elapsed_s=elapsed,
        )


def is_image_generator(session: ort.InferenceSession) -> bool:
    """Whether ``session`` looks like an image generator (by metadata kind or by its input names)."""
    if md.kind(metadata(session)) == ModelKind.IMAGE_GENERATOR:
        return True
    names = {i.name for i in session.get_inputs()}
    return {NOISE, COND} <= names and IMAGE in {o.name for o in session.get_outputs()}
