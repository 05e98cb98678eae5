"""Crack inspection across the tiers, at the entry point: joint inference as KubeEdge Sedna does it.

The small detector answers first (the edge's, else the device's); a frame it is unsure of (its
``confidence`` below ``escalate_below``) is a *hard example* and goes to the cloud's larger detector,
whose answer then stands. When the cloud cannot be reached the small detector's answer stands and the
result says so: an inspection line never stops because the backhaul did.

The nodes run the detectors (``tierflow node --detector``); this module only sends frames to them
and carries the policy out, so the API's endpoint (``POST /v1/inspections``) is written on top of it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from tierflow.engine.images import png_tensor
from tierflow.engine.tier_load import WorkMeter
from tierflow.errors import InvalidInputError, ModelNotFoundError, RecoverableError, TierUnavailableError
from tierflow.runtime.crack_detector import Detection, check_pixels
from tierflow.transport.messages import MetaValue, StageRequest, StageResponse
from tierflow.transport.peers import Peers
from tierflow.types import Tier

OP_DETECT_CRACKS = "detect_cracks"  # one frame (uint8 H x W x 3 input "image"); the answer in meta
DETECT_IMAGE = "image"  # the frame, as PNG bytes (engine/images.png_tensor)
DETECTOR_INFO_KEY = "detector"  # the info reply's meta: the node's detector variant, if it has one
# Below this confidence an edge answer is a hard example for the cloud. On the held-out camera frames
# it sends 9 % of the frames up (docs/MODELS.md, "crack-edge and crack-cloud").
ESCALATE_BELOW = 0.9
SMALL_FIRST = (Tier.EDGE, Tier.DEVICE)  # who answers first, in order of preference
LARGE = Tier.CLOUD


class LocalDetector(Protocol):
    """What the device's own detector offers (:class:`tierflow.runtime.crack_detector.CrackDetector`)."""

    def detect(self, pixels: npt.NDArray[np.uint8]) -> Detection: ...


def detection_meta(found: Detection, tier: str, elapsed_s: float) -> dict[str, MetaValue]:
    """A node's ``detect_cracks`` reply meta; ``elapsed_s`` is the
    node's compute as its SIMULATED slowdown stretched it."""
    return {
        "cracked": bool(found.cracked),
        "score": float(found.score),
        "confidence": float(found.confidence),
        "box": json.dumps(found.box),
        "elapsed_s": float(elapsed_s),
        "variant": found.variant,
        "tier": tier,
    }


@dataclass(frozen=True)
class TierDetection:
    """One tier's answer on one frame, and what it cost."""

    tier: Tier
    variant: str
    cracked: bool
    score: float
    confidence: float
    box: tuple[float, float, float, float] | None
    elapsed_s: float  # the detector's compute on that tier
    wall_s: float  # as the entry point waited: compute, the hop and the frame's transfer

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier.value, "variant": self.variant, "cracked": self.cracked,
            "score": round(self.score, 4), "confidence": round(self.confidence, 4),
            "box": None if self.box is None else [round(v, 4) for v in self.box],
            "compute_s": round(self.elapsed_s, 6), "wall_s": round(self.wall_s, 6),
        }


@dataclass(frozen=True)
class Inspection:
    """The answer that stands (``final``), the first tier's, and why the frame went up or did not."""

    final: TierDetection
    first: TierDetection
    escalated: bool
    reason: str
    failed: tuple[str, ...] = ()  # tiers that were tried and could not answer, with why

    def to_dict(self) -> dict[str, Any]:
        return {
            "cracked": self.final.cracked, "score": round(self.final.score, 4),
            "confidence": round(self.final.confidence, 4),
            "box": None if self.final.box is None else [round(v, 4) for v in self.final.box],
            "tier": self.final.tier.value, "escalated": self.escalated,
            "route": {
                "first": self.first.to_dict(), "final": self.final.to_dict(), "reason": self.reason,
                "failed": list(self.failed),
                "wall_s": round(self.first.wall_s + (self.final.wall_s if self.escalated else 0.0), 6),
            },
        }


def check_floor(escalate_below: float) -> float:
    if not 0.5 <= float(escalate_below) <= 1.0:
        raise InvalidInputError(f"escalate_below must be in 0.5..1 (a confidence), not {escalate_below!r}")
    return float(escalate_below)


class TieredDetectors:
    """The entry point's crack detection on every tier: ``local`` is the device node's own detector
    (None: the device has none), ``peers`` reach the edge and the cloud."""

    def __init__(
        self, local: LocalDetector | None, peers: Peers | None, meter: WorkMeter | None = None
    ) -> None:
        self.local = local
        self.peers = peers
        self.meter = meter if meter is not None else WorkMeter()  # the device's compute (tier_load.py)
        self.on_detected: list[Callable[[TierDetection], None]] = []  # told of every tier's answer

    async def detect(self, tier: Tier, pixels: npt.NDArray[np.uint8]) -> TierDetection:
        """One frame on ``tier``; a tier without a detector or out of reach raises a tierflow error."""
        found = await self._detect(tier, pixels)
        for hook in self.on_detected:
            hook(found)
        return found

    async def _detect(self, tier: Tier, pixels: npt.NDArray[np.uint8]) -> TierDetection:
        pixels = check_pixels(pixels)  # a wrong frame is the caller's error, not a tier's
        started = time.perf_counter()
        if tier is Tier.DEVICE:
            if self.local is None:
                raise ModelNotFoundError("the device node serves no crack detector")
            with self.meter.busy():
                found = await asyncio.to_thread(self.local.detect, pixels)
            return TierDetection(tier, found.variant, found.cracked, found.score, found.confidence, found.box,
                                 found.elapsed_s, time.perf_counter() - started)
        if self.peers is None:
            raise TierUnavailableError(f"the entry point has no route to tier {tier.value}", tier=tier.value)
        reply: StageResponse = await self.peers.call(
            tier.value, StageRequest(OP_DETECT_CRACKS, inputs={DETECT_IMAGE: png_tensor(pixels)}), None
        )
        meta = reply.meta
        box = json.loads(str(meta["box"]))
        return TierDetection(
            tier, str(meta["variant"]), bool(meta["cracked"]), float(meta["score"]),
            float(meta["confidence"]),
            None if box is None else (float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            float(meta["elapsed_s"]), time.perf_counter() - started,
        )

    async def inspect(
        self, pixels: npt.NDArray[np.uint8], *, escalate_below: float = ESCALATE_BELOW, escalate: bool = True,
    ) -> Inspection:
        """The small detector's answer, or the cloud's on a hard example (see the module doc)."""
        floor = check_floor(escalate_below)
        failed: list[str] = []
        first = await self._first_answer(pixels, failed)

        def stands(reason: str) -> Inspection:
            return Inspection(first, first, False, reason, tuple(failed))

        sure = f"confidence {first.confidence:.3f}"
        if first.tier is LARGE:
            return stands("only the cloud's detector could answer")
        if first.confidence >= floor:
            return stands(f"{sure} >= {floor:g}")
        if not escalate:
            return stands(f"{sure} < {floor:g}, escalation off")
        try:
            large = await self.detect(LARGE, pixels)
        except (RecoverableError, ModelNotFoundError) as exc:
            failed.append(f"{LARGE.value}: {exc}")
            return stands(f"{sure} < {floor:g}, but the cloud could not answer: the {first.tier.value}'s "
                          "answer stands")
        return Inspection(large, first, True, f"{sure} < {floor:g}: a hard example, answered by the cloud",
                          tuple(failed))

    async def _first_answer(self, pixels: npt.NDArray[np.uint8], failed: list[str]) -> TierDetection:
        for tier in (*SMALL_FIRST, LARGE):
            try:
                return await self.detect(tier, pixels)
            except (RecoverableError, ModelNotFoundError) as exc:  # down, or serves no detector
                failed.append(f"{tier.value}: {exc}")
        raise TierUnavailableError("no tier could run a crack detector: " + "; ".join(failed))

