"""The crack detector of the inspection scenario on ONNX Runtime (trained by
:mod:`tierflow.compiler.train_crack_detector`).

A detector file reads ``image``: float32 [N, 3, S, S], RGB in [0, 1], and returns ``crack_prob``
[N, 1, S, S] (per-pixel crack probability) and ``crack_score`` [N] (the probability that the image
shows a crack). Its metadata says what it is (``tierflow.config`` ``kind`` = ``crack-detector``),
its side ``S`` (``tierflow.input_size``) and its variant (``edge`` or ``cloud``)::

    detector = CrackDetector.open("src/tierflow/model/assets/crack_edge.onnx")
    found = detector.detect(pixels)     # uint8 [H, W, 3], any size
    found.cracked, found.score, found.confidence, found.box

Images of any size are resized to ``S`` x ``S`` (box filter down, bilinear up: the renderer's own
low-resolution renders are box filters of its high-resolution ones). ``confidence`` is how sure the
detector is of its own answer (see :func:`confidence_of`); the inspection scenario sends the least
confident edge frames to the cloud variant.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image

from tierflow.errors import InvalidInputError, InvalidModelError, UnsupportedModelError
from tierflow.model import metadata as md
from tierflow.runtime.image_result import unit_nchw
from tierflow.runtime.session import SessionOptions, metadata, open_session
from tierflow.types.models import ModelKind

DETECTOR_KIND = ModelKind.CRACK_DETECTOR.value  # tierflow.config "kind" (its tierflow.kind is "vision":
# it loads and runs as a plain vision model; the config says which one)
INPUT = "image"
PROB = "crack_prob"
SCORE = "crack_score"
PIXEL_THRESHOLD = 0.5  # a pixel is a crack pixel from this probability on
Box = tuple[float, float, float, float]


@dataclass(frozen=True, eq=False)  # eq=False: ``mask`` is an array
class Detection:
    """One image's answer.

    ``score``: the probability that the image shows a crack; ``cracked``: ``score >= threshold``;
    ``confidence``: in [0.5, 1], how sure the detector is of ``cracked`` (low: likely wrong);
    ``box``: normalised ``(x0, y0, x1, y1)`` of the predicted crack pixels (None when not cracked);
    ``mask``: the predicted crack pixels at the model's input size (all False when not cracked);
    ``elapsed_s``: inference time (a batch's time shared equally among its images)."""

    cracked: bool
    score: float
    confidence: float
    box: Box | None
    mask: npt.NDArray[np.bool_]
    elapsed_s: float
    variant: str


def check_pixels(pixels: object) -> npt.NDArray[np.uint8]:
    """``pixels`` as a uint8 [H, W, 3] array, or :class:`InvalidInputError` saying what is wrong."""
    if not isinstance(pixels, np.ndarray):
        raise InvalidInputError(f"pixels must be a numpy array, not {type(pixels).__name__}")
    if pixels.dtype != np.uint8:
        raise InvalidInputError(f"pixels must be uint8 (0..255), not {pixels.dtype}")
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvalidInputError(f"pixels must be [H, W, 3] (RGB), not {list(pixels.shape)}")
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise InvalidInputError(f"pixels must not be empty, got {list(pixels.shape)}")
    return pixels


def resize(pixels: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.uint8]:
    """``pixels`` at ``size`` x ``size``: box filter when shrinking (what the renderer's own lower
    resolutions are), bilinear when enlarging; the same array when it already fits."""
    h, w = pixels.shape[:2]
    if (h, w) == (size, size):
        return pixels
    shrink = h >= size and w >= size
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(pixels).resize((size, size), method), np.uint8)


def confidence_of(score: float) -> float:
    """How sure the detector is of its answer: the probability it gives that answer.

    The score is trained with a cross-entropy on the image label, so it is close to calibrated
    and its distance from the threshold ranks the errors; ``evaluate`` in the training module
    measures how well (AUROC of low confidence against being wrong)."""
    return max(score, 1.0 - score)


def mask_and_box(prob: npt.NDArray[np.float32], cracked: bool) -> tuple[npt.NDArray[np.bool_], Box | None]:
    """The crack pixels of one probability map [S, S] and their normalised box.

    A cracked answer always gets a box: when no pixel reaches :data:`PIXEL_THRESHOLD` (a faint
    crack the image head still saw), the pixels within half of the map's peak stand for it."""
    if not cracked:
        return np.zeros(prob.shape, np.bool_), None
    mask = prob >= PIXEL_THRESHOLD
    if not mask.any():
        mask = prob >= 0.5 * float(prob.max())
    return mask, box_of(mask)


def box_of(mask: npt.NDArray[np.bool_]) -> Box | None:
    """Normalised ``(x0, y0, x1, y1)`` around the True pixels of a [H, W] mask; None when there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h)


class CrackDetector:
    """A crack detector file open on ONNX Runtime (CPU)."""

    def __init__(self, session: ort.InferenceSession, path: str) -> None:
        meta = metadata(session)
        try:
            config, size = md.config(meta), md.input_size(meta)
        except InvalidModelError as exc:  # malformed tierflow metadata: not a detector we can drive
            raise UnsupportedModelError(f"{path} is not a crack detector: {exc}") from exc
        if config.get("kind") != DETECTOR_KIND:
            raise UnsupportedModelError(
                f"{path} is not a crack detector (no tierflow.config kind {DETECTOR_KIND!r})"
            )
        if size is None:
            raise UnsupportedModelError(f"{path}: a crack detector needs tierflow.input_size")
        self._check_signature(session, path, size)
        self.session = session
        self.size = size
        self.variant = str(config.get("variant", "unknown"))
        self.threshold = float(config.get("threshold", 0.5))
        self.config = config

    @classmethod
    def open(cls, path: str | Path, threads: int = 1) -> CrackDetector:
        """Open a detector file; :class:`UnsupportedModelError` when it is not one."""
        options = SessionOptions(intra_op_threads=threads, providers=("CPUExecutionProvider",))
        try:
            session = open_session(path, options)
        except UnsupportedModelError:
            raise
        except InvalidModelError as exc:  # not even ONNX: certainly not a crack detector
            raise UnsupportedModelError(f"{path} is not a crack detector: {exc}") from exc
        return cls(session, str(path))

    @staticmethod
    def _check_signature(session: ort.InferenceSession, path: str, size: int) -> None:
        """The graph must read ``image`` [N, 3, S, S] and write both outputs."""
        inputs = [i.name for i in session.get_inputs()]
        outputs = {o.name for o in session.get_outputs()}
        if inputs != [INPUT] or not {PROB, SCORE} <= outputs:
            raise UnsupportedModelError(
                f"{path}: a crack detector reads {INPUT!r} and writes {PROB!r} and {SCORE!r}; "
                f"this one reads {inputs} and writes {sorted(outputs)}"
            )
        shape = list(session.get_inputs()[0].shape)
        fixed = [d for d in shape[1:] if isinstance(d, int)]  # symbolic sides are allowed
        if len(shape) != 4 or fixed not in ([3, size, size], [3]):
            raise UnsupportedModelError(f"{path}: {INPUT!r} must be [N, 3, {size}, {size}], not {shape}")

    def detect(self, pixels: npt.NDArray[np.uint8]) -> Detection:
        """Look for a crack in one uint8 [H, W, 3] RGB image of any size."""
        return self.detect_batch([pixels])[0]

    def detect_batch(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Detection]:
        """:meth:`detect` for several images in one ONNX Runtime call."""
        if isinstance(images, np.ndarray):
            if images.ndim != 4:
                raise InvalidInputError(
                    f"detect_batch takes a list of [H, W, 3] images or an [N, H, W, 3] stack, "
                    f"not {list(images.shape)} (detect takes one image)"
                )
            images = list(images)  # an [N, H, W, 3] stack is N images
        if len(images) == 0:
            raise InvalidInputError("detect_batch needs at least one image")
        x = unit_nchw(np.stack([resize(check_pixels(p), self.size) for p in images]))
        started = time.perf_counter()
        prob, score = self.session.run([PROB, SCORE], {INPUT: x})
        each = (time.perf_counter() - started) / len(images)
        return [self._detection(np.asarray(p[0]), float(s), each) for p, s in zip(prob, score, strict=True)]

    def probabilities(
        self, pixels: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The raw outputs for a uint8 [N, S, S, 3] stack at the input size: maps [N, S, S], scores [N]."""
        x = unit_nchw(pixels)
        if x.shape[2:] != (self.size, self.size):
            raise InvalidInputError(f"the detector reads {self.size} px images, not {list(x.shape[2:])}")
        prob, score = self.session.run([PROB, SCORE], {INPUT: x})
        return np.asarray(prob)[:, 0], np.asarray(score)

    def _detection(self, prob: npt.NDArray[np.float32], score: float, elapsed: float) -> Detection:
        cracked = score >= self.threshold
        mask, box = mask_and_box(prob, cracked)
        return Detection(cracked, score, confidence_of(score), box, mask, elapsed, self.variant)
