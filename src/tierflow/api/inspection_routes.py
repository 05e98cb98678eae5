"""``POST /v1/inspections``: is there a crack in this frame, and where. The small detector answers; a
frame it is unsure of goes to the cloud's larger one (joint inference, :mod:`tierflow.engine.inspection`)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from tierflow.api import errors
from tierflow.api.auth import caller
from tierflow.api.image_routes import MAX_UPLOAD_BYTES, open_picture
from tierflow.api.routes import state_of
from tierflow.engine.inspection import ESCALATE_BELOW
from tierflow.errors import InvalidInputError, UnsupportedModelError

router = APIRouter()


class InspectionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, description="the frame: a PNG or JPEG, base64")
    escalate_below: float = Field(
        ESCALATE_BELOW, ge=0.5, le=1.0,
        description="a first answer less confident than this goes to the cloud's detector",
    )
    escalate: bool = Field(True, description="false: the first answer stands whatever its confidence")


class InspectionReply(BaseModel):
    cracked: bool
    score: float = Field(description="the probability of a crack in the frame, from the answer that stands")
    confidence: float = Field(description="how sure that answer is, 0.5..1")
    box: list[float] | None = Field(description="the crack's box, normalised x0, y0, x1, y1; null: none")
    tier: str = Field(description="the tier whose answer stands")
    escalated: bool = Field(description="the frame went to the cloud as a hard example")
    route: dict[str, Any] = Field(
        description="the first answer, the final one, why, and the tiers that failed"
    )


def _frame(encoded: str) -> np.ndarray:
    if len(encoded) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise InvalidInputError(f"image: larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"image: not base64 ({exc})") from exc
    pixels: np.ndarray = np.asarray(open_picture(data, "image", square=False).convert("RGB"), np.uint8)
    return pixels


@router.post("/v1/inspections", response_model=InspectionReply, responses=errors.responses(401, 422, 503))
async def inspect(body: InspectionBody, request: Request, owner: str = Depends(caller)) -> InspectionReply:
    """Look for a crack in one frame: the edge's detector answers, a hard example goes to the cloud."""
    state = state_of(request)
    if state.detectors is None:
        raise UnsupportedModelError("this deployment serves no crack detector (start nodes with --detector)")
    found = await state.detectors.inspect(
        _frame(body.image), escalate_below=body.escalate_below, escalate=body.escalate
    )
    state.recent.inspection(found)
    return InspectionReply(**found.to_dict())
