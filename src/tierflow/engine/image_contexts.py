"""Image contexts: the last picture of a run of image requests and how it was made, so that a follow-up
("make it blue", "now at night", "higher resolution") works on it.

A context is kept in the deployment's context store, with the same owner, expiry and 404 / 403 / 410
rules as a conversation; the picture rides in the record's meta as base64 PNG. A follow-up
(:func:`plan_follow_up`):

- changes the scene's prompt (:mod:`tierflow.model.scenes.follow_up`) and makes the new prompt with the
  **same seed**: the flow sampler starts from the same noise, so the layout stays (on demo-image, a
  colour change moved a quarter of the pixels by more than 24 grey levels, and the new colour was read
  right in 12 of 12; a whole-picture edit at strength 0.8 moved about as much and read right in 9);
- then keeps the last picture's own pixels wherever the new one does not differ from it by more than
  :data:`CHANGE_LEVEL` (grown and feathered: :func:`keep_unchanged`), so that what the follow-up did
  not name stays exactly as it was;
- "higher resolution" makes the same prompt and seed at the next level: the pyramid starts from the
  same 64 px sample, so it is the same picture with more pixels;
- a picture that no prompt and seed reproduce (the result of ``/v1/images/edits``) is edited instead:
  the whole picture, from its noised self, under the new prompt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from tierflow.context.store import DEFAULT_EXPIRES_IN, ContextRecord, ContextStore
from tierflow.errors import InvalidInputError
from tierflow.model.scenes.follow_up import FollowUp, follow_up
from tierflow.runtime.image_result import IMAGE_TO_IMAGE_STRENGTH, ImageEdit, read_png
from tierflow.runtime.text_to_image import dilate
from tierflow.types.tasks import IMAGE_RESOLUTIONS

KIND_KEY = "kind"  # a context record's meta: what the context holds
IMAGE_KIND = "image"  # ... a picture (a conversation's records carry no kind)
CHANGE_LEVEL = 24  # grey levels: a pixel that moved less than this is the last picture's own (at 48 the
#                   shading a repainted car left on the road stayed behind as a smudge)
MASK_SIDE = 256  # where the changed region is grown and feathered (then scaled to the picture)
GROW_PX = 4  # at MASK_SIDE: the changed region grows by this much, to take in the objects' edges
FEATHER_PX = 2.0  # at MASK_SIDE: the blend's soft edge


@dataclass(frozen=True)
class LastImage:
    """A context's last picture and how it was made."""

    prompt: str  # the scene's prompt after every follow-up so far
    seed: int
    resolution: int
    png: bytes
    reproducible: bool  # the prompt and seed make it again (False: it came from an uploaded picture)

    @cached_property
    def pixels(self) -> npt.NDArray[np.uint8]:
        return read_png(self.png, "the context's last picture")

    def to_meta(self) -> dict[str, str]:
        return {
            KIND_KEY: IMAGE_KIND,
            "prompt": self.prompt,
            "seed": str(self.seed),
            "resolution": str(self.resolution),
            "reproducible": "1" if self.reproducible else "0",
            "png": base64.b64encode(self.png).decode("ascii"),
        }

    @classmethod
    def of(cls, record: ContextRecord) -> LastImage:
        """The picture a context holds; an InvalidInputError if it holds a conversation instead."""
        meta = record.meta
        if meta.get(KIND_KEY) != IMAGE_KIND:
            raise InvalidInputError(f"context {record.context_id} is a conversation, not a picture's context")
        try:
            return cls(meta["prompt"], int(meta["seed"]), int(meta["resolution"]),
                       base64.b64decode(meta["png"], validate=True), meta["reproducible"] == "1")
        except (KeyError, ValueError, binascii.Error) as exc:
            raise InvalidInputError(f"context {record.context_id} holds no readable picture") from exc


@dataclass(frozen=True)
class FollowUpPlan:
    """What to make for a follow-up, and how to finish it (:meth:`finish`)."""

    follow: FollowUp
    resolution: int
    seed: int
    edit: ImageEdit | None  # None: make ``follow.prompt`` with ``seed`` anew

    @property
    def prompt(self) -> str:
        return self.follow.prompt

    def finish(
        self, last: LastImage, made: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.uint8], dict[str, Any]]:
        """The picture to return (the last one's pixels kept where nothing changed, when they are of one
        size) and what was done, for the response's ``route``."""
        method = "edited the last picture" if self.edit is not None else "made anew with the same seed"
        pixels, changed = made, 1.0
        if self.edit is None and made.shape == last.pixels.shape:
            pixels, changed = keep_unchanged(last.pixels, made)
            method += ", keeping the last picture where nothing changed"
        return pixels, {
            "prompt": self.prompt,
            "changes": list(self.follow.changes),
            "upscaled_from": last.resolution if self.resolution > last.resolution else None,
            "ignored_words": list(self.follow.ignored_words),
            "method": method,
            "changed_share": round(changed, 4),
        }


def plan_follow_up(last: LastImage, text: str, size: int | None) -> FollowUpPlan:
    """How to make the follow-up ``text`` on ``last``; ``size`` (None: the last one's, or the next level
    up when the text asks for a higher resolution)."""
    follow = follow_up(last.prompt, text)
    resolution = size or (next_level(last.resolution) if follow.upscale else last.resolution)
    edit = None if last.reproducible else ImageEdit(last.pixels, None, IMAGE_TO_IMAGE_STRENGTH)
    return FollowUpPlan(follow, resolution, last.seed, edit)


def next_level(resolution: int) -> int:
    """The next image level up (the largest stays the largest)."""
    larger = [r for r in IMAGE_RESOLUTIONS if r > resolution]
    return larger[0] if larger else resolution


def keep_unchanged(
    last: npt.NDArray[np.uint8], made: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.uint8], float]:
    """``made`` where it differs from ``last`` (by more than :data:`CHANGE_LEVEL` in any channel, grown
    by :data:`GROW_PX` and feathered), ``last`` exactly elsewhere; and the share of pixels taken from
    ``made``."""
    side = made.shape[0]
    moved = np.abs(made.astype(np.int16) - last.astype(np.int16)).max(axis=2) > CHANGE_LEVEL
    changed = Image.fromarray(moved.astype(np.uint8) * 255, "L")
    coarse = np.asarray(changed.resize((MASK_SIDE, MASK_SIDE), Image.Resampling.BOX)) > 0
    grown = Image.fromarray(dilate(coarse, GROW_PX).astype(np.uint8) * 255, "L")
    soft = grown.filter(ImageFilter.GaussianBlur(FEATHER_PX)).resize((side, side), Image.Resampling.BILINEAR)
    alpha = np.asarray(soft, np.float32)[..., None] / np.float32(255.0)
    blended = np.rint(alpha * made + (1.0 - alpha) * last).astype(np.uint8)
    return blended, float((alpha[..., 0] > 0).mean())


class ImageContexts:
    """The image contexts of one deployment's store."""

    def __init__(self, store: ContextStore, model: str) -> None:
        self.store = store
        self.model = model  # the image model's name, as the records say

    async def last(self, context_id: str, owner: str) -> LastImage:
        record = await asyncio.to_thread(self.store.get, context_id, owner)
        return LastImage.of(record)

    async def keep(
        self, owner: str, context_id: str | None, image: LastImage, expires_in: float | None
    ) -> ContextRecord:
        """Make ``image`` the context's last picture (a new context when ``context_id`` is None)."""
        lifetime = expires_in or DEFAULT_EXPIRES_IN
        if context_id is None:
            meta = image.to_meta()
            return await asyncio.to_thread(self.store.create, owner, self.model, lifetime, meta=meta)
        await asyncio.to_thread(self.store.set_meta, context_id, image.to_meta())
        return await asyncio.to_thread(self.store.touch, context_id, lifetime)
