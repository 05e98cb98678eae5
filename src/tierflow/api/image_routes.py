"""The image endpoints, OpenAI's shape, routed by SLA (docs/ROUTING.md): ``POST /v1/images/generations``
(a JSON body), ``POST /v1/images/edits`` (multipart form: the picture, an optional mask, the prompt) and
``POST /v1/clips`` (a short animated GIF: the router picks its tier, size and length)."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tierflow.api import errors
from tierflow.api.auth import caller
from tierflow.api.routes import APIState, state_of
from tierflow.api.schemas import Routed
from tierflow.engine.image_contexts import ImageContexts, LastImage, plan_follow_up
from tierflow.engine.image_routing import ImageRoute
from tierflow.errors import InvalidInputError, UnsupportedModelError
from tierflow.router.sla import SLA
from tierflow.runtime.image_result import ImageEdit, png_bytes
from tierflow.types.tasks import IMAGE_RESOLUTIONS

router = APIRouter()

DEFAULT_SIZE = 512
MAX_UPLOAD_BYTES = 32 * 2**20
MASK_HELP = (
    "where to repaint: a PNG whose transparent pixels (or, without alpha, white pixels) are repainted; "
    "absent: the whole picture, from its noised self (image-to-image)"
)


class ImageBody(Routed):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (quality, style)

    prompt: str = Field(min_length=1, max_length=4000)
    size: str | None = Field(None, max_length=20, examples=["1024x1024"], description="WxH, square")
    n: int = Field(1, ge=1, le=1, description="one image per request")
    response_format: Literal["b64_json"] = "b64_json"
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    model: str | None = Field(None, max_length=200)
    context_id: str | None = Field(
        None, max_length=200,
        description='tierflow: a follow-up to the last picture of this context ("make it blue", "hd")',
    )
    expires_in: float | None = Field(None, gt=0, le=30 * 86400, description="the context's lifetime, s")

    def resolution(self) -> int:
        return self.asked_resolution() or DEFAULT_SIZE

    def asked_resolution(self) -> int | None:
        """The size asked for (None: not said)."""
        if self.size is None:
            return None
        width, x, height = self.size.lower().partition("x")
        if not x or not width.isdigit() or width != height:
            raise InvalidInputError(f"size: expected a square WxH such as 1024x1024, got {self.size!r}")
        side = int(width)
        if side not in IMAGE_RESOLUTIONS:
            sizes = ", ".join(f"{r}x{r}" for r in IMAGE_RESOLUTIONS)
            raise InvalidInputError(f"size: no image level for {self.size} (one of: {sizes})")
        return side

    def image_sla(self) -> SLA:
        """Images prefer quality unless the SLA says otherwise: the largest image within max_latency."""
        raw = dict(self.sla or {})
        if raw.get("prefer") is None:
            raw["prefer"] = "quality"
        return SLA.parse(raw)


class ImageData(BaseModel):
    b64_json: str


class ImageReply(BaseModel):
    created: int
    data: list[ImageData]
    route: dict[str, Any] = Field(description="where the image was made, its size, the router's decision")
    context_id: str = Field(description="tierflow: send it back with a follow-up to change this picture")
    expires_in: float


@router.post("/v1/images/generations", response_model=ImageReply, responses=errors.responses(401, 422, 503))
async def generate_image(body: ImageBody, request: Request, owner: str = Depends(caller)) -> ImageReply:
    """One image for ``prompt`` at ``size`` (or smaller, down to ``sla.min_resolution``), made on the tier
    the router chooses; ``route`` says where, how long it took and what else there was."""
    state = state_of(request)
    if state.routed_images is None:
        raise UnsupportedModelError("this deployment serves no image model (start it with --image-model)")
    sla = body.image_sla()
    _, battery = body.routing()
    await state.conversations.report_device(battery, body.metered, body.network)  # kept for later requests
    contexts = image_contexts(state)
    last = None if body.context_id is None else await contexts.last(body.context_id, owner)
    plan = None if last is None else plan_follow_up(last, body.prompt, body.asked_resolution())
    routed = await state.routed_images.generate(
        body.prompt if plan is None else plan.prompt,
        body.resolution() if plan is None else plan.resolution,
        sla,
        seed=body.seed if plan is None else plan.seed,
        battery=battery,
        metered=body.metered,
        pin=body.tier,
        edit=None if plan is None else plan.edit,
    )
    route = routed.to_dict()
    png = routed.image.png
    if plan is not None and last is not None:
        pixels, route["follow_up"] = plan.finish(last, routed.image.pixels)
        png = png_bytes(pixels) if pixels is not routed.image.pixels else png
    made = LastImage(
        prompt=body.prompt if plan is None else plan.prompt, seed=routed.image.seed,
        resolution=routed.resolution, png=png, reproducible=last is None or last.reproducible,
    )
    return await _answer(state, owner, routed, route, made, body)


def image_contexts(state: APIState) -> ImageContexts:
    assert state.image_contexts is not None  # an entry point with routed images has them
    return state.image_contexts


async def _answer(
    state: APIState, owner: str, routed: ImageRoute, route: dict[str, Any], made: LastImage, body: ImageBody
) -> ImageReply:
    """The reply, once the picture is the context's last one (a new context when the body names none)."""
    state.recent.image(routed)
    record = await image_contexts(state).keep(owner, body.context_id, made, body.expires_in)
    return ImageReply(
        created=int(time.time()), data=[ImageData(b64_json=base64.b64encode(made.png).decode("ascii"))],
        route=route, context_id=record.context_id, expires_in=record.expires_in(time.time()),
    )


@router.post("/v1/images/edits", response_model=ImageReply, responses=errors.responses(401, 422, 503))
async def edit_image(
    request: Request,
    image: Annotated[UploadFile, File(description="the picture to edit: a square PNG or JPEG")],
    prompt: Annotated[str, Form(min_length=1, max_length=4000)],
    mask: Annotated[UploadFile | None, File(description=MASK_HELP)] = None,
    size: Annotated[str | None, Form(description="WxH of the result (default: the picture's)")] = None,
    n: Annotated[int, Form(ge=1, le=1)] = 1,
    response_format: Annotated[Literal["b64_json"], Form()] = "b64_json",
    seed: Annotated[int | None, Form(ge=0, le=2**63 - 1)] = None,
    strength: Annotated[float | None, Form(
        gt=0.0, le=1.0, description="how far from the picture (1: anew; default 1 with a mask, else 0.8)"
    )] = None,
    sla: Annotated[str | None, Form(max_length=2000, description="the SLA as JSON")] = None,
    tier: Annotated[str | None, Form(max_length=20)] = None,
    model: Annotated[str | None, Form(max_length=200)] = None,
    context_id: Annotated[str | None, Form(max_length=200, description="keep the result here")] = None,
    owner: str = Depends(caller),
) -> ImageReply:
    """``image`` repainted under ``prompt`` inside ``mask``, on the tier the router chooses among those
    whose model can edit; outside the mask the picture comes back as it was. The result becomes the last
    picture of ``context_id`` (a new context when absent) for follow-ups."""
    state = state_of(request)
    if state.routed_images is None:
        raise UnsupportedModelError("this deployment serves no image model (start it with --image-model)")
    pixels = _read_picture(await image.read(MAX_UPLOAD_BYTES + 1), "image")
    region = None if mask is None else _read_mask(await mask.read(MAX_UPLOAD_BYTES + 1), pixels.shape[:2])
    if size is None and pixels.shape[0] in IMAGE_RESOLUTIONS:
        size = f"{pixels.shape[0]}x{pixels.shape[0]}"
    try:
        body = ImageBody.model_validate(
            {"prompt": prompt, "size": size, "seed": seed, "model": model, "tier": tier,
             "sla": json.loads(sla) if sla else None, "context_id": context_id}
        )
    except (ValidationError, ValueError) as exc:
        raise InvalidInputError(f"edit form: {' '.join(str(exc).split())[:300]}") from exc
    if body.context_id is not None:
        await image_contexts(state).last(body.context_id, owner)  # the caller's, live, a picture's context
    edit = ImageEdit(pixels, region, strength)
    _, battery = body.routing()
    routed = await state.routed_images.generate(
        body.prompt, body.resolution(), body.image_sla(), seed=body.seed, battery=battery,
        metered=body.metered, pin=body.tier, edit=edit,
    )
    made = LastImage(prompt=body.prompt, seed=routed.image.seed, resolution=routed.resolution,
                     png=routed.image.png, reproducible=False)  # it starts from the uploaded picture
    return await _answer(state, owner, routed, routed.to_dict(), made, body)


def open_picture(data: bytes, what: str, square: bool = True) -> Image.Image:
    """An uploaded PNG or JPEG, or an InvalidInputError naming ``what`` is wrong with it."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidInputError(f"{what}: larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInputError(f"{what}: not a readable PNG or JPEG ({exc})") from exc
    if square and img.width != img.height:
        raise InvalidInputError(f"{what}: must be square, is {img.width}x{img.height}")
    return img


def _read_picture(data: bytes, what: str) -> np.ndarray:
    pixels: np.ndarray = np.asarray(open_picture(data, what).convert("RGB"), np.uint8)
    return pixels


def _read_mask(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """OpenAI's convention: transparent pixels are repainted; a mask without alpha: white pixels are."""
    img = open_picture(data, "mask")
    if img.size != (shape[1], shape[0]):
        raise InvalidInputError(f"mask: is {img.width}x{img.height}, the image {shape[1]}x{shape[0]}")
    if "A" in img.getbands():
        region: np.ndarray = np.asarray(img.getchannel("A")) == 0
    else:
        region = np.asarray(img.convert("L")) > 127
    return region


class ClipBody(ImageBody):
    frames: int = Field(16, ge=1, le=48, description="the most frames wanted (the router may make fewer)")
    fps: float = Field(8.0, ge=0.5, le=30.0)

    def clip_sla(self) -> SLA:
        """Clips prefer quality (the largest, then the longest) unless the SLA says otherwise; any size
        down to ``min_resolution`` is acceptable."""
        raw = dict(self.sla or {})
        if raw.get("prefer") is None:
            raw["prefer"] = "quality"
        return SLA.parse(raw)


class ClipData(BaseModel):
    b64_gif: str


class ClipReply(BaseModel):
    created: int
    data: list[ClipData]
    route: dict[str, Any] = Field(description="where the clip was made, its size and length, the decision")


@router.post("/v1/clips", response_model=ClipReply, responses=errors.responses(401, 422, 503))
async def generate_clip(body: ClipBody, request: Request, owner: str = Depends(caller)) -> ClipReply:
    """A short clip of ``prompt`` (a camera pan over the scene) as an animated GIF: up to ``frames``
    frames of up to ``size``, made on the tier the router chooses, at the size and length it chooses."""
    state = state_of(request)
    if state.routed_images is None:
        raise UnsupportedModelError("this deployment serves no image model (start it with --image-model)")
    _, battery = body.routing()
    await state.conversations.report_device(battery, body.metered, body.network)
    routed = await state.routed_images.clip(
        body.prompt, body.frames, body.resolution(), body.clip_sla(), seed=body.seed, fps=body.fps,
        battery=battery, metered=body.metered, pin=body.tier,
    )
    encoded = base64.b64encode(routed.clip.gif).decode("ascii")
    state.recent.clip(routed)
    return ClipReply(created=int(time.time()), data=[ClipData(b64_gif=encoded)], route=routed.to_dict())

