"""The image endpoint: ``POST /v1/images/generations``, OpenAI's shape, routed by SLA (docs/ROUTING.md)."""

from __future__ import annotations

import base64
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from tierflow.api import errors
from tierflow.api.auth import caller
from tierflow.api.routes import state_of
from tierflow.api.schemas import Routed
from tierflow.errors import InvalidInputError, UnsupportedModelError
from tierflow.router.sla import SLA
from tierflow.runtime.image import png_bytes
from tierflow.types.tasks import IMAGE_RESOLUTIONS

router = APIRouter()

DEFAULT_SIZE = 512


class ImageBody(Routed):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (quality, style)

    prompt: str = Field(min_length=1, max_length=4000)
    size: str | None = Field(None, max_length=20, examples=["1024x1024"], description="WxH, square")
    n: int = Field(1, ge=1, le=1, description="one image per request")
    response_format: Literal["b64_json"] = "b64_json"
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    model: str | None = Field(None, max_length=200)

    def resolution(self) -> int:
        if self.size is None:
            return DEFAULT_SIZE
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
    routed = await state.routed_images.generate(
        body.prompt,
        body.resolution(),
        sla,
        seed=body.seed,
        battery=battery,
        metered=body.metered,
        pin=body.tier,
    )
    state.recent.image(routed)
    encoded = base64.b64encode(png_bytes(routed.image.pixels)).decode("ascii")
    return ImageReply(created=int(time.time()), data=[ImageData(b64_json=encoded)], route=routed.to_dict())
