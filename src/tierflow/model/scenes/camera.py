"""Procedural scenes, a SIMULATED inspection camera: what a real camera on an inspection line makes
of a rendered frame, and cracks that are hard to see.

The renderer draws a perfect picture: every crack in dark ink, no noise, no blur, exposure and
colour exactly right. A camera on a pipe rack or beside a wall does not see that, and a detector
trained on perfect pictures has nothing to learn that a larger one would learn better. Two things
here make the inspection task what a camera sees; both are SIMULATED (numbers chosen to look like
a small industrial or phone-class sensor, not measured on one):

**The camera** (:func:`camera_frame`), drawn per frame from ``rng`` (:class:`CameraSettings`),
in this order, in linear light (the frame's values are decoded with a 2.2 gamma first):

* optics: defocus, a Gaussian of sigma 0.3 to 1.3 px, and on a third of the frames motion blur,
  a line 1 to 4 px long in any direction (the camera or the line moves during the exposure);
  pixel sizes are for a 256 px frame and scale with the frame's side;
* vignetting: the corners darkened by 0 to 30 % (``1 - v r^2``, ``r`` = 1 at the corners);
* auto-exposure: a gain that brings the frame's mean linear luminance up to 0.3 (what the
  renderer's daylight frames have), between 1 and 8 (18 dB), then off by a factor
  ``exp(N(0, 0.25))`` (about a third of a stop, either way): a day frame keeps about its exposure,
  a night frame (mean luminance 0.02 to 0.06) gets 5 to 8x the gain, and with it the noise;
* white balance off by ``exp(N(0, 0.05))`` on red and on blue (a few percent tint);
* sensor noise, per pixel and channel: shot noise of variance ``a * gain * x`` and read noise of
  standard deviation ``b * gain`` (``a`` 0.0002 to 0.001, ``b`` 0.001 to 0.003, per frame): in
  the mid-tones about 2 to 4 grey levels of 255 at gain 1, 5 to 13 at gain 8 (the edge detector's
  2x box filter halves them);
* a 12-bit converter and a 2.2 gamma tone curve to uint8 (a lookup table, as a camera's ISP has).

**Faint cracks** (:func:`faint_crack`): the renderer draws every crack as an open dark line. A
hairline crack, a shallow one or one filled with dust shows much less contrast. Given the render
with the crack and the same render without it (the renderer's crack has its own random stream,
so the two differ only in the crack's ink), the crack's ink is scaled by ``contrast``;
:func:`draw_contrast` draws it per crack: a quarter of the cracks keep their full ink, the rest
keep 25 to 100 % of it. :func:`inspection_frame` renders a scene that way and sends it through
the camera: what the inspection detectors are trained and scored on. The renderer itself is not
changed: everyone else's renders stay byte for byte what they were.

numpy only; deterministic for the same ``rng`` state.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tierflow.errors import InvalidInputError
from tierflow.model.scenes.grammar import RenderedScene, Scene
from tierflow.model.scenes.render import render

CAMERA_SIDE = 256  # the side the inspection camera sends; blur sizes below are in its pixels
GAMMA = 2.2
ADC_LEVELS = 4096  # a 12-bit converter
TARGET_LUMINANCE = 0.3  # auto-exposure aims the mean linear luminance here (a daylight render's)
GAIN_RANGE = (1.0, 8.0)  # it never darkens a render; in low light it adds up to 8x (18 dB)
DEFOCUS_SIGMA = (0.3, 1.3)  # px at CAMERA_SIDE
MOTION_SHARE, MOTION_LENGTH = 1 / 3, (1.0, 4.0)  # px at CAMERA_SIDE
VIGNETTE = (0.0, 0.3)
EXPOSURE_ERROR = 0.25  # sd of the log of auto-exposure's error
WHITE_BALANCE_ERROR = 0.05  # sd of the log of the red and blue gains' errors
SHOT_NOISE = (0.0002, 0.001)  # variance per unit of linear signal, at gain 1
READ_NOISE = (0.001, 0.003)  # standard deviation in linear units, at gain 1
FULL_CONTRAST_SHARE, CONTRAST_RANGE = 0.25, (0.25, 1.0)

_DECODE = ((np.arange(256, dtype=np.float64) / 255.0) ** GAMMA).astype(np.float32)
_ENCODE = np.round((np.arange(ADC_LEVELS, dtype=np.float64) / (ADC_LEVELS - 1)) ** (1 / GAMMA) * 255).astype(
    np.uint8
)
_LUMA = np.asarray([0.2126, 0.7152, 0.0722], np.float32)  # linear RGB to luminance

ImageU8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class CameraSettings:
    """One frame's SIMULATED camera (see the module's docstring for the ranges)."""

    defocus: float  # Gaussian sigma, px at CAMERA_SIDE
    motion: float  # motion blur length, px at CAMERA_SIDE (0: none)
    motion_angle: float  # radians
    vignette: float  # corner darkening
    exposure_error: float  # factor on auto-exposure's gain
    white_balance: tuple[float, float, float]  # gains on R, G, B
    shot: float
    read: float


def draw_settings(rng: np.random.Generator) -> CameraSettings:
    """One frame's camera, drawn from ``rng`` (always the same number of draws)."""
    u = rng.random(8)
    moving = u[1] < MOTION_SHARE
    z = rng.standard_normal(3)
    return CameraSettings(
        defocus=float(DEFOCUS_SIGMA[0] + (DEFOCUS_SIGMA[1] - DEFOCUS_SIGMA[0]) * u[0]),
        motion=float(MOTION_LENGTH[0] + (MOTION_LENGTH[1] - MOTION_LENGTH[0]) * u[2]) if moving else 0.0,
        motion_angle=float(math.pi * u[3]),
        vignette=float(VIGNETTE[0] + (VIGNETTE[1] - VIGNETTE[0]) * u[4]),
        exposure_error=float(math.exp(EXPOSURE_ERROR * z[0])),
        white_balance=(
            float(math.exp(WHITE_BALANCE_ERROR * z[1])),
            1.0,
            float(math.exp(WHITE_BALANCE_ERROR * z[2])),
        ),
        shot=float(SHOT_NOISE[0] + (SHOT_NOISE[1] - SHOT_NOISE[0]) * u[5]),
        read=float(READ_NOISE[0] + (READ_NOISE[1] - READ_NOISE[0]) * u[6]),
    )


def camera_frame(image: ImageU8, rng: np.random.Generator) -> ImageU8:
    """``image`` (uint8 [H, W, 3], a render) as the SIMULATED inspection camera sees it: blur,
    vignetting, auto-exposure, white balance, sensor noise, 12-bit capture and tone curve, all
    drawn per frame from ``rng`` (see the module's docstring)."""
    return apply_camera(image, draw_settings(rng), rng)


def apply_camera(image: ImageU8, settings: CameraSettings, rng: np.random.Generator) -> ImageU8:
    """:func:`camera_frame` with the settings given; ``rng`` draws the sensor noise."""
    pixels = _check(image)
    h, w = pixels.shape[:2]
    scale = max(h, w) / CAMERA_SIDE
    x = _DECODE[pixels]  # linear light
    x = _blur(x, settings.defocus * scale, settings.motion * scale, settings.motion_angle)
    if settings.vignette > 0:
        yy = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
        xx = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
        r2 = (yy[:, None] ** 2 + xx[None, :] ** 2) / np.float32(0.5)
        x *= (1.0 - np.float32(settings.vignette) * r2)[..., None]
    mean = max(float((x.reshape(-1, 3) @ _LUMA).mean()), 1e-4)
    gain = float(np.clip(TARGET_LUMINANCE / mean, *GAIN_RANGE)) * settings.exposure_error
    x *= np.asarray(settings.white_balance, np.float32) * np.float32(gain)
    np.clip(x, 0.0, 1.0, out=x)
    # shot noise grows with the signal, both grow with the gain (low light: the gain is high)
    std = np.sqrt(np.float32(settings.shot * gain) * x + np.float32((settings.read * gain) ** 2))
    x += std * rng.standard_normal(x.shape, dtype=np.float32)
    codes = np.clip(np.rint(x * np.float32(ADC_LEVELS - 1)), 0, ADC_LEVELS - 1).astype(np.intp)
    return np.asarray(_ENCODE[codes], np.uint8)


def _blur(x: npt.NDArray[np.float32], sigma: float, length: float, angle: float) -> npt.NDArray[np.float32]:
    """Defocus (a Gaussian of ``sigma`` px, separable) and then a motion streak (``length`` px at
    ``angle``: the mean of copies shifted along it, bilinear), both on edge-padded copies."""
    if sigma > 0:
        radius = int(math.ceil(3 * sigma))
        k = np.arange(-radius, radius + 1, dtype=np.float64)
        weights = np.exp(-(k**2) / (2 * sigma**2))
        x = _shifted_sum(x, {(0, int(d)): float(w) for d, w in zip(k, weights / weights.sum(), strict=True)})
        x = _shifted_sum(x, {(int(d), 0): float(w) for d, w in zip(k, weights / weights.sum(), strict=True)})
    if length > 0:
        taps = max(2, int(math.ceil(length * 2)))  # half-pixel steps along the streak
        shifts: dict[tuple[int, int], float] = {}
        for t in ((np.arange(taps) + 0.5) / taps - 0.5) * length:
            dy, dx = float(t) * math.sin(angle), float(t) * math.cos(angle)
            y0, x0 = math.floor(dy), math.floor(dx)
            fy, fx = dy - y0, dx - x0
            for oy, ox, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)),
                              (1, 1, fy * fx)):
                if w > 0:
                    key = (y0 + oy, x0 + ox)
                    shifts[key] = shifts.get(key, 0.0) + w / taps
        x = _shifted_sum(x, shifts)
    return x


def _shifted_sum(x: npt.NDArray[np.float32], shifts: dict[tuple[int, int], float]) -> npt.NDArray[np.float32]:
    """``sum(w * x[i + dy, j + dx])`` over ``shifts`` ``{(dy, dx): w}``, the edges repeated."""
    h, w = x.shape[:2]
    r = max(max(abs(dy), abs(dx)) for dy, dx in shifts)
    padded = np.pad(x, ((r, r), (r, r), (0, 0)), mode="edge")
    out = np.zeros_like(x)
    term = np.empty_like(x)
    for (dy, dx), weight in shifts.items():
        np.multiply(padded[r + dy : r + dy + h, r + dx : r + dx + w], np.float32(weight), out=term)
        out += term
    return out


def draw_contrast(rng: np.random.Generator) -> float:
    """The share of its ink a crack keeps (SIMULATED: hairline, shallow or dust-filled cracks)."""
    u = rng.random(2)
    if u[0] < FULL_CONTRAST_SHARE:
        return 1.0
    return float(CONTRAST_RANGE[0] + (CONTRAST_RANGE[1] - CONTRAST_RANGE[0]) * u[1])


def faint_crack(cracked: ImageU8, uncracked: ImageU8, contrast: float) -> ImageU8:
    """A render with its crack's ink scaled by ``contrast`` (1: as drawn, 0: gone), from the same
    render with and without the crack."""
    if not 0.0 <= contrast <= 1.0:
        raise InvalidInputError(f"contrast must be in 0..1, not {contrast}")
    a, b = _check(cracked), _check(uncracked)
    if a.shape != b.shape:
        raise InvalidInputError(f"the two renders differ in size: {list(a.shape)} and {list(b.shape)}")
    if contrast == 1.0:
        return a
    mixed = b.astype(np.float32) + np.float32(contrast) * (a.astype(np.float32) - b.astype(np.float32))
    return np.asarray(np.rint(mixed), np.uint8)


def inspection_frame(scene: Scene, side: int, seed: int, rng: np.random.Generator) -> RenderedScene:
    """``scene`` rendered at ``side`` px with ``seed``, its crack (if any) made faint by
    :func:`draw_contrast`, through :func:`camera_frame`: the render with the SIMULATED camera's
    frame for its image (the labels are the render's). ``rng`` draws the contrast, then the
    camera (the same draws whether the scene is cracked or not)."""
    rendered = render(scene, side, seed)
    contrast = draw_contrast(rng)
    image = rendered.image
    if scene.crack and contrast < 1.0:
        plain = render(dataclasses.replace(scene, crack=False), side, seed).image
        image = faint_crack(image, plain, contrast)
    return dataclasses.replace(rendered, image=camera_frame(image, rng))


def _check(image: object) -> ImageU8:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError("the camera takes a uint8 [H, W, 3] image")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInputError("the camera takes a non-empty image")
    return image
