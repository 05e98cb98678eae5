"""Images across the tiers, at the entry point: what each tier's image generator can make, and one image
made on a tier the caller chose (the device's own executor, or a node over the data plane).

Choosing the tier (an SLA, the energy policy) is the router's job: this class only asks the tiers
and carries the choice out, so the API's image endpoint can be written on top of it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from tierflow.engine.tier_load import WorkMeter
from tierflow.errors import (
    InvalidInputError,
    InvalidModelError,
    RecoverableError,
    TierUnavailableError,
    UnsupportedModelError,
)
from tierflow.runtime.image_result import ClipResult, ImageEdit, ImageResult, png_bytes, read_png
from tierflow.transport.messages import MetaValue, StageRequest, StageResponse
from tierflow.transport.peers import Peers
from tierflow.types import Tier

# Operations of a node's data plane (tierflow.node.server answers them; defined here, below it, so
# that the entry point can send them)
OP_GENERATE_IMAGE = "generate_image"  # a whole image; prompt, resolution, refine, seed in meta (an edit:
#                                       the picture and mask as input tensors, strength in meta)
OP_GENERATE_CLIP = "generate_clip"  # a clip; prompt, frames, resolution, seed, fps in meta; the GIF back
CLIP_GIF = "gif"  # a clip's reply: the animated GIF's bytes as a uint8 tensor
# Pictures cross a link as PNG bytes in a uint8 tensor: lossless, and 5-10x fewer bytes than raw pixels
# (a 512 px edit's picture and mask: 0.14 MB instead of 1 MB, 0.1 s instead of 0.8 s up a 10 Mbit/s link)
IMAGE_PNG = "png"  # a generate_image reply: the image
EDIT_IMAGE = "image"  # an edit's picture
EDIT_MASK = "mask"  # an edit's mask, white = repaint; absent: everywhere
OP_INFO = "info"  # the node's tier, model id, provider, stage times and image model
IMAGE_INFO_KEY = "image"  # the info reply's meta: the node's image model (ImageCapability, JSON)
INFO_TIMEOUT_S = 10.0  # a tier that does not answer its info within this is left out


class LocalImageModel(Protocol):
    """What the device's own image model offers (:class:`tierflow.node.executor.NodeExecutor`)."""

    @property
    def model_id(self) -> str: ...

    @property
    def max_resolution(self) -> int | None: ...

    @property
    def has_refiner(self) -> bool: ...

    @property
    def can_edit(self) -> bool: ...

    def generate_clip(
        self, prompt: str | None, frames: int, resolution: int, seed: int | None, fps: float
    ) -> ClipResult: ...

    def generate_image(
        self, prompt: str | None, resolution: int, refine: bool | None, seed: int | None,
        edit: ImageEdit | None = None,
    ) -> ImageResult: ...


@dataclass(frozen=True)
class ImageCapability:
    """What one tier's image model can make: the router's offers are built from these."""

    max_resolution: int | None  # the target's side cap in pixels; None: no cap of its own
    has_refiner: bool
    model_id: str
    can_edit: bool = False  # it repaints a given picture (image-to-image, inpainting) and makes clips

    @classmethod
    def of(cls, model: LocalImageModel) -> ImageCapability:
        return cls(model.max_resolution, model.has_refiner, model.model_id, model.can_edit)

    def encode(self) -> str:
        """The form the ``info`` op carries it in (meta values are scalars; None must survive)."""
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: MetaValue) -> ImageCapability:
        try:
            data = json.loads(str(raw))
            cap = data["max_resolution"]
            return cls(
                max_resolution=None if cap is None else int(cap),
                has_refiner=bool(data["has_refiner"]),
                model_id=str(data["model_id"]),
                can_edit=bool(data.get("can_edit", False)),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidModelError(f"a node described its image model as {str(raw)[:80]!r}") from exc


@dataclass(frozen=True)
class TieredImage:
    """One image and where and how it was made."""

    png: bytes  # the image as it came over the link (or was made here)
    seed: int  # the noise seed: the same seed on the same model reproduces the image
    refined: bool
    tier: Tier
    elapsed_s: float  # the tier's compute (ONNX Runtime, as its SIMULATED slowdown stretches it)
    wall_s: float  # as the entry point waited for it: compute plus the hop and the tensor's transfer
    ignored_words: tuple[str, ...] = ()  # words of the prompt the tier's text encoder does not know
    stages: tuple[tuple[str, float], ...] = ()  # (stage, seconds) as they ran, where the model says

    @cached_property
    def pixels(self) -> np.ndarray:
        """uint8, H x W x 3."""
        return read_png(self.png, f"the image from the {self.tier.value}")


@dataclass(frozen=True)
class TieredClip:
    """One clip (an animated GIF) and where and how it was made."""

    gif: bytes
    frames: int
    seed: int
    tier: Tier
    elapsed_s: float  # the tier's compute
    wall_s: float  # as the entry point waited for it


def clip_meta(
    prompt: str | None, frames: int, resolution: int, seed: int | None, fps: float
) -> dict[str, MetaValue]:
    meta: dict[str, MetaValue] = {"frames": frames, "resolution": resolution, "fps": fps}
    if prompt is not None:
        meta["prompt"] = prompt
    if seed is not None:
        meta["seed"] = seed
    return meta


def bytes_tensor(data: bytes) -> np.ndarray:
    """Bytes (a PNG, a GIF) as a uint8 tensor, to travel as a stage's output or input."""
    return np.frombuffer(data, np.uint8).copy()


def png_tensor(pixels: np.ndarray) -> np.ndarray:
    """A picture (or a mask) as PNG bytes in a uint8 tensor, the form pictures take on the data plane."""
    return bytes_tensor(png_bytes(np.ascontiguousarray(pixels, np.uint8)))


def tensor_bytes(tensor: np.ndarray, what: str) -> bytes:
    """The bytes a uint8 tensor carries (a PNG, a GIF); an InvalidInputError if it is not a byte vector."""
    if tensor.dtype != np.uint8 or tensor.ndim != 1:
        raise InvalidInputError(f"{what}: expected a 1-D uint8 tensor, got {tensor.dtype} {tensor.shape}")
    return tensor.tobytes()


def reply_png(reply: StageResponse, where: str) -> bytes:
    """The PNG bytes of a ``generate_image`` reply from ``where``."""
    if IMAGE_PNG not in reply.outputs:
        raise RecoverableError(f"the {where} answered generate_image without an image")
    return tensor_bytes(reply.outputs[IMAGE_PNG], f"the image from the {where}")


def edit_inputs(edit: ImageEdit | None) -> dict[str, np.ndarray]:
    """An edit's picture and mask as a ``generate_image`` request's input tensors (PNG bytes)."""
    if edit is None:
        return {}
    inputs = {EDIT_IMAGE: png_tensor(edit.image)}
    if edit.mask is not None:
        inputs[EDIT_MASK] = png_tensor(np.where(edit.mask, 255, 0).astype(np.uint8))
    return inputs


def edit_of(request: StageRequest) -> ImageEdit | None:
    """The edit a ``generate_image`` request carries (None: a plain generation). Raises
    InvalidInputError when its picture or mask is not a PNG."""
    if EDIT_IMAGE not in request.inputs:
        return None
    image = read_png(tensor_bytes(request.inputs[EDIT_IMAGE], "the edit's picture"), "the edit's picture")
    mask = request.inputs.get(EDIT_MASK)
    what = "the edit's mask"
    region = None if mask is None else read_png(tensor_bytes(mask, what), what, grey=True)
    if region is not None and region.shape != image.shape[:2]:
        raise InvalidInputError(f"the edit's mask is {region.shape}, its picture {image.shape[:2]}")
    return ImageEdit(
        image=image,
        mask=None if region is None else region > 127,
        strength=None if "strength" not in request.meta else float(request.meta["strength"]),
    )


def image_meta(
    prompt: str | None, resolution: int, refine: bool | None, seed: int | None, edit: ImageEdit | None = None
) -> dict[str, MetaValue]:
    """A ``generate_image`` request's meta: what is None is left out (the node's default applies)."""
    meta: dict[str, MetaValue] = {"resolution": resolution}
    if refine is not None:
        meta["refine"] = refine
    if prompt is not None:
        meta["prompt"] = prompt
    if seed is not None:
        meta["seed"] = seed
    if edit is not None and edit.strength is not None:
        meta["strength"] = float(edit.strength)
    return meta


class TieredImages:
    """The entry point's image generation on every tier.

    ``local`` is the device node's own image model (None: the device makes no images); ``peers``
    reach the edge and cloud nodes (None: only the device). A remote error keeps its wire type
    (:meth:`StageResponse.raise_for_error`): a bad request stays an InvalidInputError, a tier that
    is down a TierUnavailableError naming it.
    """

    def __init__(
        self,
        local: LocalImageModel | None,
        peers: Peers | None,
        *,
        info_timeout: float = INFO_TIMEOUT_S,
        meter: WorkMeter | None = None,
    ) -> None:
        self.local = local
        self.peers = peers
        self.info_timeout = info_timeout
        self.meter = meter if meter is not None else WorkMeter()  # the device's compute (tier_load.py)

    async def capabilities(self) -> dict[Tier, ImageCapability]:
        """Every tier that serves an image model now, in tier order; one down or without one is absent."""
        out: dict[Tier, ImageCapability] = {}
        if self.local is not None:
            out[Tier.DEVICE] = ImageCapability.of(self.local)
        remote = [t for t in Tier if t is not Tier.DEVICE]
        answers = await asyncio.gather(*(self._capability(t) for t in remote))
        out.update({t: cap for t, cap in zip(remote, answers, strict=True) if cap is not None})
        return out

    async def _capability(self, tier: Tier) -> ImageCapability | None:
        try:
            reply = await self._call(tier, StageRequest(OP_INFO), self.info_timeout)
        except RecoverableError:  # down, unreachable or not answering in time: not an offer now
            return None
        raw = reply.meta.get(IMAGE_INFO_KEY)
        try:
            return ImageCapability.decode(raw) if raw is not None else None
        except InvalidModelError:  # a node that describes its model wrongly is no offer
            return None

    async def generate(
        self, tier: Tier, prompt: str | None, resolution: int, refine: bool | None, seed: int | None,
        edit: ImageEdit | None = None,
    ) -> TieredImage:
        """Make one image on ``tier``. ``refine`` None: the tier's model refines if it can; ``seed``
        None: a fresh one (returned); ``edit``: repaint that picture."""
        started = time.perf_counter()
        if tier is Tier.DEVICE:
            if self.local is None:
                raise UnsupportedModelError("the device node serves no image model")
            make = self.local.generate_image
            with self.meter.busy():
                result = await asyncio.to_thread(make, prompt, resolution, refine, seed, edit)
            return TieredImage(
                png=png_bytes(result.pixels),
                seed=result.seed,
                refined=result.refined,
                tier=tier,
                elapsed_s=result.elapsed_s,
                wall_s=time.perf_counter() - started,
                ignored_words=result.ignored_words,
                stages=result.stages,
            )
        request = StageRequest(
            OP_GENERATE_IMAGE,
            inputs=edit_inputs(edit),
            meta=image_meta(prompt, resolution, refine, seed, edit),
        )
        reply = await self._call(tier, request, None)
        return TieredImage(
            png=reply_png(reply, tier.value),
            seed=int(reply.meta["seed"]),
            refined=bool(reply.meta["refined"]),
            tier=tier,
            elapsed_s=float(reply.meta["elapsed_s"]),
            wall_s=time.perf_counter() - started,
            ignored_words=tuple(json.loads(str(reply.meta.get("ignored_words", "[]")))),
            stages=tuple((str(n), float(s)) for n, s in json.loads(str(reply.meta.get("stages", "[]")))),
        )

    async def clip(
        self, tier: Tier, prompt: str | None, frames: int, resolution: int, seed: int | None, fps: float
    ) -> TieredClip:
        """Make one clip on ``tier``."""
        started = time.perf_counter()
        if tier is Tier.DEVICE:
            if self.local is None:
                raise UnsupportedModelError("the device node serves no image model")
            with self.meter.busy():
                made = await asyncio.to_thread(
                    self.local.generate_clip, prompt, frames, resolution, seed, fps
                )
            return TieredClip(made.to_gif_bytes(), len(made.frames), made.seed, tier, made.elapsed_s,
                              time.perf_counter() - started)
        request = StageRequest(OP_GENERATE_CLIP, meta=clip_meta(prompt, frames, resolution, seed, fps))
        reply = await self._call(tier, request, None)
        return TieredClip(
            gif=tensor_bytes(reply.outputs[CLIP_GIF], f"the clip from the {tier.value}"),
            frames=int(reply.meta["frames"]),
            seed=int(reply.meta["seed"]),
            tier=tier,
            elapsed_s=float(reply.meta["elapsed_s"]),
            wall_s=time.perf_counter() - started,
        )

    async def _call(self, tier: Tier, request: StageRequest, timeout: float | None) -> StageResponse:
        if self.peers is None:
            raise TierUnavailableError(f"the entry point has no route to tier {tier.value}", tier=tier.value)
        return await self.peers.call(tier.value, request, timeout)
