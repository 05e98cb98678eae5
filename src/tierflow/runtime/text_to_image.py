"""Drives the text-to-image pipeline graph of :mod:`tierflow.model.text_to_image` on ONNX Runtime.

The graph (a whole package target, or the source model) holds the sampler and every resolution
stage; ONNX Runtime would run all of them for any one output, so the runtime cuts it into its
stages once (the sampler: inputs -> ``image_64``; each upsampler: ``image_{r/2}`` ->
``image_r``; the refiner: ``image_64`` + the prompt -> ``refined_256``) and runs only the chain a
request needs. A resolution between two levels is made at the next level up and resized down
(Lanczos), so any side from 64 px to the target's cap works.

Generation, image-to-image and inpainting are one call on the same sampler: :meth:`edit` feeds
the given picture (at 64 px), the mask (1 = repaint) and the strength; the stages then upsample
the result and the pixels outside the mask are the caller's own, at full resolution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from PIL import Image, ImageFilter

from tierflow.errors import InvalidInputError, UnsupportedModelError
from tierflow.model import metadata as md
from tierflow.model import text_to_image as t2i
from tierflow.model.partition import GraphCutter
from tierflow.runtime.flow_sampler import initial_noise, prompt_tokens, to_uint8
from tierflow.runtime.image import ImageGenerator
from tierflow.runtime.image_result import ClipResult, ImageResult, edit_strength
from tierflow.runtime.session import SessionOptions, active_provider, open_session

MAX_RESOLUTION = 2048
MAX_FRAMES = 48
DEFAULT_FPS = 8.0
PAN_PX = 2  # a clip's camera moves this many pixels (at 64 px) per frame
EDGE_FEATHER = 1  # pixels (at 64 px; 4 at 256) around the mask that the composite blends over


def is_pipeline(session: ort.InferenceSession) -> bool:
    names = {i.name for i in session.get_inputs()}
    return set(t2i.INPUTS) <= names


def open_generator(session: ort.InferenceSession, model: onnx.ModelProto | None = None) -> AnyImageGenerator:
    """The generator for an image model's session: the text-to-image pipeline, or the latent
    contract of :mod:`tierflow.runtime.image`. ``model`` (the session's graph) lets either run only
    the stages a request needs."""
    if is_pipeline(session):
        return PipelineGenerator(session, model)
    return ImageGenerator(session, model)


def open_file(path: str | Path, options: SessionOptions | None = None) -> AnyImageGenerator:
    """The generator of an image model file."""
    session = open_session(path, options)  # first: it gives the one-line error for a bad file
    return open_generator(session, onnx.load(str(path)))


def example_feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``count`` generation requests as the pipeline's inputs, with prompts of random scenes (what a
    compiler calibrates and checks a target on)."""
    from tierflow.model.scenes import prompt_of, random_scene

    rng = np.random.default_rng([seed, 11])
    feeds: list[dict[str, np.ndarray]] = []
    for i in range(count):
        feeds.append({
            t2i.TOKENS: prompt_tokens(prompt_of(random_scene(rng))).ids[None, :],
            t2i.NOISE: initial_noise(seed * 1000 + i, t2i.BASE)[None],
            t2i.INIT_IMAGE: np.zeros((1, 3, t2i.BASE, t2i.BASE), np.float32),
            t2i.MASK: np.ones((1, 1, t2i.BASE, t2i.BASE), np.float32),
            t2i.STRENGTH: np.ones(1, np.float32),
            t2i.GUIDANCE: np.full(1, 3.0, np.float32),
        })
    return feeds


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]
    output: str


class PipelineGenerator:
    """Images from the pipeline graph: ``generate`` (a prompt) and ``edit`` (a prompt over a picture)."""

    def __init__(self, session: ort.InferenceSession, model: onnx.ModelProto | None = None) -> None:
        if not is_pipeline(session):
            raise UnsupportedModelError(f"not a text-to-image pipeline: needs inputs {', '.join(t2i.INPUTS)}")
        self.session = session
        self._model = model
        outputs = {o.name for o in session.get_outputs()}
        self.levels = tuple(r for r in t2i.RESOLUTIONS if t2i.image_output(r) in outputs)
        self.refined_levels = tuple(r for r in t2i.RESOLUTIONS if t2i.image_output(r, True) in outputs)
        if t2i.image_output(t2i.BASE) not in outputs:
            raise UnsupportedModelError(f"a text-to-image pipeline without {t2i.image_output(t2i.BASE)}")
        meta = session.get_modelmeta().custom_metadata_map
        config = md.config(meta)
        self.steps = int(config.get("steps", 0)) or None
        self.default_guidance = float(config.get("guidance", 3.0))
        self.resolutions = tuple(md.resolutions(meta)) or self.levels
        self.refiner_output: str | None = t2i.image_output(256, True) if self.refined_levels else None
        options = session.get_session_options()
        self._options = SessionOptions(intra_op_threads=options.intra_op_num_threads,
                                       providers=tuple(session.get_providers()))
        self._cutter: GraphCutter | None = None
        self._sessions: dict[str, ort.InferenceSession] = {}

    # --- what it can make ------------------------------------------------------------------------

    @property
    def has_refiner(self) -> bool:
        return self.refiner_output is not None

    @property
    def max_resolution(self) -> int:
        return max(self.levels)

    @property
    def provider(self) -> str:
        return active_provider(self.session)

    def check_resolution(self, resolution: int) -> int:
        if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
            raise InvalidInputError(f"resolution must be an integer number of pixels, got {resolution!r}")
        top = self.max_resolution
        if not t2i.BASE <= resolution <= top:
            raise InvalidInputError(f"resolution {resolution} is out of range: {t2i.BASE}..{top} px")
        if resolution % 8:
            raise InvalidInputError(f"resolution {resolution} is not a multiple of 8")
        return int(resolution)

    def level_for(self, resolution: int, refine: bool) -> int:
        """The pyramid level that makes ``resolution`` (the smallest at or above it)."""
        levels = self.refined_levels if refine else self.levels
        return min((r for r in levels if r >= resolution), default=max(levels))

    # --- the stages --------------------------------------------------------------------------------

    def chain(self, level: int, refine: bool) -> list[Stage]:
        """The stages that make a ``level`` px image, in order."""
        sampler = Stage("sampler", t2i.INPUTS, t2i.image_output(t2i.BASE))
        stages = [sampler]
        start = t2i.BASE
        if refine:
            stages.append(Stage("refiner", (sampler.output, t2i.TOKENS), t2i.image_output(256, True)))
            start = 256
        res = start
        while res < level:
            nxt = t2i.RESOLUTIONS[t2i.RESOLUTIONS.index(res) + 1]
            stages.append(Stage(f"up{nxt}", (t2i.image_output(res, refine and res >= 256),),
                                 t2i.image_output(nxt, refine)))
            res = nxt
        return stages

    def stage_model(self, stage: Stage) -> onnx.ModelProto:
        """The part of the graph that computes ``stage`` from its inputs."""
        if self._model is None:
            raise UnsupportedModelError("the pipeline's stages need the model itself, not only a session")
        if self._cutter is None:
            self._cutter = GraphCutter(self._model)
        return self._cutter.extract(stage.inputs, [stage.output])

    def _session(self, stage: Stage) -> ort.InferenceSession:
        if stage.output not in self._sessions:
            part = self.stage_model(stage)
            self._sessions[stage.output] = open_session(part.SerializeToString(), self._options)
        return self._sessions[stage.output]

    def run_stage(
        self, name: str, tensors: dict[str, np.ndarray], prompt: str | None = None
    ) -> npt.NDArray[np.uint8]:
        """One stage (``up256``, ``refiner``, ``up512``...) on given inputs (its input images in
        [-1, 1]); its output as uint8 H x W x 3."""
        top = max(self.refined_levels or self.levels)
        stages = {s.name: s for s in self.chain(top, False) + self.chain(top, self.has_refiner)}
        if name not in stages:
            raise InvalidInputError(f"no stage {name!r} here (stages: {', '.join(stages)})")
        stage = stages[name]
        feeds = {**tensors, t2i.TOKENS: prompt_tokens(prompt).ids[None, :]}
        session = self._session(stage)
        wanted = {i.name for i in session.get_inputs()}
        (out,) = session.run([stage.output], {k: v for k, v in feeds.items() if k in wanted})
        pixels: npt.NDArray[np.uint8] = to_uint8(np.asarray(out, np.float32))[0]
        return pixels

    def _run(
        self, feeds: dict[str, np.ndarray], level: int, refine: bool
    ) -> tuple[np.ndarray, list[tuple[str, float]]]:
        tensors = dict(feeds)
        timings = []
        for stage in self.chain(level, refine):
            session = self._session(stage)
            wanted = {i.name for i in session.get_inputs()}
            started = time.perf_counter()
            (out,) = session.run([stage.output], {k: v for k, v in tensors.items() if k in wanted})
            timings.append((stage.name, time.perf_counter() - started))
            tensors[stage.output] = np.asarray(out, np.float32)
        return tensors[self.chain(level, refine)[-1].output], timings

    # --- calls ---------------------------------------------------------------------------------------

    def generate(
        self, prompt: str | None, resolution: int, refine: bool = False, seed: int | None = None,
        guidance: float | None = None,
    ) -> ImageResult:
        """Paint ``prompt`` at ``resolution`` px (the refiner's chain when ``refine``)."""
        return self._make(prompt, resolution, refine, seed, guidance, None, None, 1.0)

    def edit(
        self, prompt: str | None, image: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_] | None = None,
        strength: float | None = None, resolution: int | None = None, refine: bool = False,
        seed: int | None = None, guidance: float | None = None,
    ) -> ImageResult:
        """Repaint ``image`` (uint8 H x W x 3) under ``prompt``: inside ``mask`` (bool H x W, True =
        repaint; None = everywhere), from its noised self at ``1 - strength`` (1: from pure noise;
        None: 1 with a mask, 0.8 without, :func:`edit_strength`). Outside the mask the result is
        ``image`` itself (resized to ``resolution``, default its side)."""
        pixels = _check_image(image)
        strength = edit_strength(strength, mask is not None)
        side = resolution or int(pixels.shape[0])
        region = np.ones(pixels.shape[:2], bool) if mask is None else _check_mask(mask, pixels.shape[:2])
        if not region.any():
            raise InvalidInputError("the mask selects no pixel to repaint")
        return self._make(prompt, side, refine, seed, guidance, pixels, region, float(strength))

    def clip(
        self, prompt: str | None, frames: int, resolution: int, refine: bool = False, seed: int | None = None,
        fps: float = DEFAULT_FPS, pan: int = PAN_PX, guidance: float | None = None,
    ) -> ClipResult:
        """A camera pan over the scene of ``prompt``: frame 0 is a generated image; each next frame is
        the last one moved ``pan`` px (at 64 px) to the left, the strip it uncovers painted by the
        sampler (inpainting: what is kept is the last frame exactly), then upsampled to ``resolution``.
        The cost is ``frames`` sampler runs and upsampler chains: it grows with frames x area."""
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
            raise InvalidInputError(f"frames must be an integer 1..{MAX_FRAMES}, not {frames!r}")
        if not 1 <= pan <= t2i.BASE // 4:
            raise InvalidInputError(f"pan must be 1..{t2i.BASE // 4} px, not {pan!r}")
        if not 0.5 <= float(fps) <= 30.0:
            raise InvalidInputError(f"fps must be in 0.5..30, not {fps!r}")
        seed = self._seed(seed)
        started = time.perf_counter()
        first = self._make(prompt, t2i.BASE, False, seed, guidance, None, None, 1.0)
        base = t2i.BASE
        x = _to_model(first.pixels)
        strip = np.zeros((1, 1, base, base), np.float32)
        strip[..., base - pan:] = 1.0
        low = [x]
        for k in range(1, frames):
            moved = np.concatenate([x[..., pan:], np.repeat(x[..., -1:], pan, axis=3)], axis=3)
            feeds = self._feeds(prompt, seed + k, guidance, moved, strip, 1.0)
            x, _ = self._run(feeds, base, False)
            low.append(x)
        level = self.level_for(self.check_resolution(resolution), refine)
        tokens = prompt_tokens(prompt).ids[None, :]
        out = []
        for x in low:
            up = x if level == base else self._upsample(x, tokens, level, refine)
            pixels = to_uint8(up)[0]
            out.append(pixels if level == resolution else _resize(pixels, resolution))
        return ClipResult(
            frames=tuple(out), prompt=prompt, resolution=resolution, refined=refine, seed=seed,
            provider=self.provider, elapsed_s=time.perf_counter() - started, fps=float(fps),
            ignored_words=first.ignored_words,
        )

    def _upsample(self, x: np.ndarray, tokens: np.ndarray, level: int, refine: bool) -> np.ndarray:
        tensors = {t2i.image_output(t2i.BASE): x, t2i.TOKENS: tokens}
        for stage in self.chain(level, refine)[1:]:
            session = self._session(stage)
            wanted = {i.name for i in session.get_inputs()}
            (made,) = session.run([stage.output], {k: v for k, v in tensors.items() if k in wanted})
            tensors[stage.output] = np.asarray(made, np.float32)
        return tensors[self.chain(level, refine)[-1].output]

    def _seed(self, seed: int | None) -> int:
        if seed is None:
            return int(np.random.SeedSequence().entropy % 2**62)  # type: ignore[operator]
        return int(seed)

    def _feeds(
        self, prompt: str | None, seed: int, guidance: float | None, init: np.ndarray | None,
        mask: np.ndarray | None, strength: float,
    ) -> dict[str, np.ndarray]:
        """The sampler's inputs: ``init`` [1, 3, 64, 64] in [-1, 1] and ``mask`` [1, 1, 64, 64]
        (None: plain generation)."""
        g = self.default_guidance if guidance is None else float(guidance)
        if not np.isfinite(g) or not 0.0 <= g <= 50.0:
            raise InvalidInputError(f"guidance must be a number in 0..50, not {guidance!r}")
        base = t2i.BASE
        return {
            t2i.TOKENS: prompt_tokens(prompt).ids[None, :],
            t2i.NOISE: initial_noise(seed % 2**63, base)[None],
            t2i.INIT_IMAGE: np.zeros((1, 3, base, base), np.float32) if init is None else init,
            t2i.MASK: np.ones((1, 1, base, base), np.float32) if mask is None else mask,
            t2i.STRENGTH: np.array([strength], np.float32),
            t2i.GUIDANCE: np.array([g], np.float32),
        }

    def _make(
        self, prompt: str | None, resolution: int, refine: bool, seed: int | None, guidance: float | None,
        image: npt.NDArray[np.uint8] | None, region: npt.NDArray[np.bool_] | None, strength: float,
    ) -> ImageResult:
        resolution = self.check_resolution(resolution)
        if refine and not self.has_refiner:
            raise InvalidInputError("this target has no refiner stage; run it without refine")
        seed = self._seed(seed)
        tokens = prompt_tokens(prompt)
        init = mask = None
        if image is not None and region is not None:
            init = _to_model(_resize(image, t2i.BASE))
            mask = _mask_at(region, t2i.BASE)[None, None]
        feeds = self._feeds(prompt, seed, guidance, init, mask, strength)
        started = time.perf_counter()
        level = self.level_for(resolution, refine)
        out, timings = self._run(feeds, level, refine)
        pixels = to_uint8(out)[0]
        if level != resolution:
            pixels = _resize(pixels, resolution)
        if image is not None and region is not None:
            pixels = _composite(pixels, _resize(image, resolution), region)
        return ImageResult(
            pixels=pixels, prompt=prompt, resolution=resolution, refined=refine, seed=seed,
            provider=self.provider, elapsed_s=time.perf_counter() - started,
            ignored_words=tokens.unknown, stages=tuple((n, round(s, 6)) for n, s in timings),
        )


# --- pixels -------------------------------------------------------------------------------------------


def _check_image(image: object) -> npt.NDArray[np.uint8]:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] != arr.shape[1]:
        raise InvalidInputError(f"the image must be square uint8 H x W x 3, not {arr.dtype} {arr.shape}")
    if not 16 <= arr.shape[0] <= 4096:
        raise InvalidInputError(f"the image side must be 16..4096 px, not {arr.shape[0]}")
    return arr


def _check_mask(mask: object, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.shape != shape:
        raise InvalidInputError(f"the mask is {list(arr.shape)}; the image is {list(shape)}")
    return arr.astype(bool) if arr.dtype == bool else arr > (127 if arr.dtype == np.uint8 else 0.5)


def _resize(pixels: npt.NDArray[np.uint8], side: int) -> npt.NDArray[np.uint8]:
    if pixels.shape[0] == side:
        return pixels
    img = Image.fromarray(pixels, "RGB")
    box = Image.Resampling.BOX if side < pixels.shape[0] else Image.Resampling.LANCZOS
    return np.asarray(img.resize((side, side), box), np.uint8)


def _mask_at(region: npt.NDArray[np.bool_], side: int) -> npt.NDArray[np.float32]:
    """The repaint mask at ``side`` px: a pixel is repainted when any of it is inside the region."""
    img = Image.fromarray(region.astype(np.uint8) * 255, "L").resize((side, side), Image.Resampling.BOX)
    return (np.asarray(img) > 0).astype(np.float32)


def _to_model(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return (pixels.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0).astype(np.float32)


def _composite(
    made: npt.NDArray[np.uint8], given: npt.NDArray[np.uint8], region: npt.NDArray[np.bool_]
) -> npt.NDArray[np.uint8]:
    """``made`` inside the region (grown and feathered a little at the output's scale), ``given`` outside
    it: the pixels away from the region are exactly the caller's."""
    alpha = _alpha(region, made.shape[0])[..., None]
    return np.rint(alpha * made + (1.0 - alpha) * given).astype(np.uint8)


def _alpha(region: npt.NDArray[np.bool_], side: int) -> npt.NDArray[np.float32]:
    """How much of the made image each pixel takes: 1 on the region grown by the feather band,
    falling to 0 over another band outside it."""
    band = max(1, round(EDGE_FEATHER * side / t2i.BASE))
    img = Image.fromarray(region.astype(np.uint8) * 255, "L").resize((side, side), Image.Resampling.NEAREST)
    grown = Image.fromarray(dilate(np.asarray(img) > 0, band).astype(np.uint8) * 255, "L")
    alpha: npt.NDArray[np.float32] = np.asarray(grown.filter(ImageFilter.BoxBlur(band)), np.float32) / 255.0
    return alpha


def dilate(mask: npt.NDArray[np.bool_], radius: int) -> npt.NDArray[np.bool_]:
    """``mask`` grown by ``radius`` pixels in a square: PIL's MaxFilter(2 * radius + 1) on a binary image,
    one axis at a time (4 * radius array ORs, where MaxFilter looks at (2 * radius + 1) ** 2 pixels per
    pixel: a 2048 px edit's 32 px band took 20 s that way)."""
    out = mask.copy()
    for axis in (0, 1):
        source = out.copy()
        n = source.shape[axis]
        for shift in range(1, min(radius, n - 1) + 1):
            ahead = [slice(None), slice(None)]
            behind = [slice(None), slice(None)]
            ahead[axis], behind[axis] = slice(shift, None), slice(None, n - shift)
            out[tuple(ahead)] |= source[tuple(behind)]
            out[tuple(behind)] |= source[tuple(ahead)]
    return out


def touched(region: npt.NDArray[np.bool_], side: int) -> npt.NDArray[np.bool_]:
    """The pixels of a ``side`` px edit that may differ from the given picture: the region and a
    feather band around it (every other pixel is the caller's own, exactly)."""
    inside: npt.NDArray[np.bool_] = _alpha(region, side) > 0
    return inside


AnyImageGenerator = ImageGenerator | PipelineGenerator
