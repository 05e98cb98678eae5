"""One generated image and how it was made (every image generator returns these)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from tierflow.errors import InvalidInputError


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[1, 3, H, W] floats in [-1, 1] -> H x W x 3 uint8."""
    pixels = (np.clip(image[0], -1.0, 1.0) + 1.0) * 127.5
    return np.ascontiguousarray(np.rint(pixels).astype(np.uint8).transpose(1, 2, 0))


PNG_LEVEL = 1  # zlib level: 3x faster than PIL's default 6 for ~30 % more bytes (a 512 px image: 10 vs 34 ms)


def png_bytes(pixels: np.ndarray) -> bytes:
    """An H x W x 3 uint8 image (or an H x W uint8 mask) as PNG."""
    buf = io.BytesIO()
    mode = "L" if pixels.ndim == 2 else "RGB"
    Image.fromarray(pixels, mode).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def read_png(data: bytes, what: str, *, grey: bool = False) -> np.ndarray:
    """A PNG's pixels (H x W x 3 uint8; ``grey``: H x W); an InvalidInputError naming ``what`` if it is
    not a PNG."""
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
        img.load()
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise InvalidInputError(f"{what}: not a readable PNG ({exc})") from exc
    return np.asarray(img.convert("L" if grey else "RGB"), np.uint8)


@dataclass(frozen=True)
class ImageResult:
    """One generated image and how it was made."""

    pixels: np.ndarray  # uint8, H x W x 3
    prompt: str | None
    resolution: int
    refined: bool
    seed: int  # the noise seed: generate(..., seed=seed) reproduces this image
    provider: str
    elapsed_s: float  # ONNX Runtime time only
    ignored_words: tuple[str, ...] = ()  # words of the prompt the text encoder does not know
    stages: tuple[tuple[str, float], ...] = ()  # (stage, seconds) in the order they ran

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def to_png_bytes(self) -> bytes:
        return png_bytes(self.pixels)

    def save(self, path: str | Path) -> Path:
        """Write the image as PNG to ``path``."""
        path = Path(path)
        try:
            path.write_bytes(self.to_png_bytes())
        except OSError as exc:
            raise InvalidInputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return path


# How far from the picture an edit goes when the caller does not say. A masked edit repaints its region
# anew (diffusers' inpainting pipeline defaults to 1.0 too): at 0.8 the old colour shows through often
# enough that "paint the car red" failed for some seeds. A whole-picture edit keeps the layout (SDEdit,
# diffusers' image-to-image default 0.8).
INPAINT_STRENGTH = 1.0
IMAGE_TO_IMAGE_STRENGTH = 0.8


def edit_strength(strength: float | None, masked: bool) -> float:
    """``strength`` checked, or the default for a masked / whole-picture edit when it is None."""
    if strength is None:
        return INPAINT_STRENGTH if masked else IMAGE_TO_IMAGE_STRENGTH
    if not 0.0 < float(strength) <= 1.0:
        raise InvalidInputError(f"strength must be in (0, 1], not {strength!r}")
    return float(strength)


def unit_nchw(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """uint8 images [N, H, W, 3] (or one [H, W, 3]) -> float32 [N, 3, H, W] in [0, 1], the input of the
    classifiers and detectors trained here (the scene classifier, the crack detectors)."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise InvalidInputError(f"expected uint8 images [N, H, W, 3], got {arr.dtype} {list(arr.shape)}")
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


@dataclass(frozen=True)
class ImageEdit:
    """What an edit starts from: the picture (uint8 H x W x 3), where to repaint (bool H x W; None:
    everywhere) and how far from the picture the sampler may go (1: from pure noise; None: the
    default of :func:`edit_strength`)."""

    image: np.ndarray
    mask: np.ndarray | None = None
    strength: float | None = None

    def __post_init__(self) -> None:
        edit_strength(self.strength, self.mask is not None)


@dataclass(frozen=True)
class ClipResult:
    """A short clip (frames of one size, in order) and how it was made."""

    frames: tuple[np.ndarray, ...]  # uint8, H x W x 3 each
    prompt: str | None
    resolution: int
    refined: bool
    seed: int
    provider: str
    elapsed_s: float
    fps: float
    ignored_words: tuple[str, ...] = ()

    def to_gif_bytes(self) -> bytes:
        """The clip as an animated GIF that loops."""
        images = [Image.fromarray(f, "RGB") for f in self.frames]
        buf = io.BytesIO()
        images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                       duration=round(1000 / self.fps), loop=0)
        return buf.getvalue()
