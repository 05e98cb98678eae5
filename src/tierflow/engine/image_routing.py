"""Image generation routed by SLA, network and battery: which tier makes the image, at what size.

Offers come from what each tier's image model can make now (:meth:`TieredImages.capabilities`):
one per tier and resolution level up to the size asked for and the tier's cap (the phone target
256 px, the edge 1024, the cloud 2048 with the refiner, by default), quality ``refined`` where the
tier's model has the refiner, else ``base``. Smaller levels are the graceful degradation an SLA's
``min_resolution`` allows.

The matrix rows ``image_<size>`` hold seconds per image, end to end. Their prior is re-set before
every decision: the tier's compute, from one 256 px image it made when first seen (compute grows
with the pixels: x4 per doubling of the side, as measured on random-image) plus, off the device,
the round trip and the image's bytes over the device's link to that tier as planned now; what
was observed carries over as a ratio (:meth:`TaskResourceMatrix.set_prior`).

A tier that fails or does not answer within the latency budget left is retried on the next
offer of another tier that still fits it (:func:`tierflow.router.sla.fallbacks`); with
``offline_ok`` the next feasible offer is tried even past the budget, and the answer says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tierflow.engine.images import ImageCapability, TieredClip, TieredImage, TieredImages
from tierflow.engine.picture_sizes import PictureSizes, image_bytes
from tierflow.engine.routing import EntryRouter
from tierflow.engine.sharded import ShardedLM
from tierflow.errors import InvalidInputError, RecoverableError, TierflowError, TierUnavailableError
from tierflow.planner.power import radio_for_profile
from tierflow.router.energy import BatteryState
from tierflow.router.sla import SLA, Alternative, Decision, Offer, fallbacks
from tierflow.runtime.image_result import ImageEdit
from tierflow.types.links import transfer_s
from tierflow.types.tasks import IMAGE_RESOLUTIONS, TaskKind
from tierflow.types.tiers import Tier

CALIBRATION_RESOLUTION = 256  # the size of the one image a tier makes to be measured
CALIBRATION_SEED = 0
CAPABILITIES_TTL_S = 30.0  # how long the tiers' image models are believed before they are asked again
CALIBRATION_TIMEOUT_S = 30.0  # a tier whose first small image takes longer is not an offer
DEFAULT_FPS = 8.0
_Made = TypeVar("_Made")


def _upload_bytes(edit: ImageEdit | None) -> int:
    """Bytes an image request sends up: an edit's picture (its mask's PNG is a few kB), else none."""
    return 0 if edit is None else image_bytes(edit.image.shape[0])


def quality_of(capability: ImageCapability) -> str:
    return "refined" if capability.has_refiner else "base"


@dataclass(frozen=True)
class ImageRoute:
    """An image made where the router chose, and the tries that failed before it."""

    decision: Decision
    image: TieredImage
    resolution: int
    failed: tuple[dict[str, str], ...] = ()  # {"tier", "error"} per failed try, in order
    degraded: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": self.image.tier.value,
            "resolution": self.resolution,
            "refined": self.image.refined,
            "seed": self.image.seed,
            "compute_s": self.image.elapsed_s,
            "wall_s": self.image.wall_s,
            "degraded": self.degraded,
            "ignored_words": list(self.image.ignored_words),
            "failed": list(self.failed),
            "decision": self.decision.to_dict(),
        }


@dataclass(frozen=True)
class ClipRoute:
    """A clip made where the router chose (how long and how large, too), and the tries that failed."""

    decision: Decision
    clip: TieredClip
    resolution: int
    failed: tuple[dict[str, str], ...] = ()
    degraded: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": self.clip.tier.value,
            "resolution": self.resolution,
            "frames": self.clip.frames,
            "seed": self.clip.seed,
            "bytes": len(self.clip.gif),
            "compute_s": self.clip.elapsed_s,
            "wall_s": self.clip.wall_s,
            "degraded": self.degraded,
            "failed": list(self.failed),
            "decision": self.decision.to_dict(),
        }


def levels_from_stages(stages: tuple[tuple[str, float], ...], elapsed_s: float) -> dict[int, float]:
    """Seconds to make each level, from one image's stage timings (``sampler``, ``refiner``, ``up256``,
    ``up512``...): the stages up to that level's upsampler, stretched like the whole image was (a
    SIMULATED slowdown stretches the tier's compute, not each stage)."""
    total = sum(s for _, s in stages)
    if not stages or total <= 0:
        return {}
    stretch = max(elapsed_s / total, 1.0)
    levels: dict[int, float] = {}
    spent = 0.0
    for name, seconds in stages:
        spent += seconds * stretch
        if name.startswith("up") and name[2:].isdigit():
            levels[int(name[2:])] = spent
        elif name == "refiner":
            levels[CALIBRATION_RESOLUTION] = spent
    return levels


def clip_lengths(frames: int) -> list[int]:
    """The lengths a clip of up to ``frames`` frames is offered at: a quarter, a half and all of it."""
    return sorted({max(1, frames // 4), max(1, frames // 2), frames})


@dataclass
class RoutedImages:
    """The entry point's routed image generation (see the module docstring)."""

    images: TieredImages
    router: EntryRouter
    lm: ShardedLM | None = None  # the link estimates and the network state (the LM's planner keeps them)
    clock: Any = time.monotonic
    compute_256_s: dict[Tier, float] = field(default_factory=dict)
    level_s: dict[Tier, dict[int, float]] = field(default_factory=dict)  # measured seconds per level
    sizes: PictureSizes = field(default_factory=PictureSizes)  # the bytes each tier's pictures took
    _capabilities: dict[Tier, ImageCapability] = field(default_factory=dict)
    _asked_at: float = -math.inf

    async def capabilities(self) -> dict[Tier, ImageCapability]:
        """The tiers' image models (asked again every CAPABILITIES_TTL_S, or after a tier failed)."""
        if self.clock() - self._asked_at >= CAPABILITIES_TTL_S:
            self._capabilities = await self.images.capabilities()
            self._asked_at = self.clock()
        for tier in list(self._capabilities):  # a failed calibration forgets its tier
            if tier not in self.compute_256_s:
                await self._calibrate(tier)
        return dict(self._capabilities)

    def forget(self, tier: Tier) -> None:
        """``tier`` failed: not an offer until the tiers are asked again."""
        self._capabilities.pop(tier, None)
        self.refresh()

    def refresh(self) -> None:
        """Ask the tiers again at the next request (a link changed: a tier out of reach may be back)."""
        self._asked_at = -math.inf

    async def _calibrate(self, tier: Tier) -> None:
        """Measure the tier's compute on one warm image (SIMULATED slowdown included): a latent generator's
        at 256 px (its cost grows with the area), a pipeline's at its largest size, whose stage timings
        give every level's cost. A tier that fails or hangs is left out until the tiers are asked again
        (CAPABILITIES_TTL_S)."""
        cap = self._capabilities.get(tier)
        size = CALIBRATION_RESOLUTION
        if cap is not None and cap.can_edit and cap.max_resolution:
            size = max(CALIBRATION_RESOLUTION, min(cap.max_resolution, max(IMAGE_RESOLUTIONS)))
        try:
            # twice, timing the second: the first run opens the stage sessions and grows ONNX Runtime's
            # arenas, which no later request pays (measured cold, a phone's clip was predicted 5x slow)
            for _ in range(2):
                making = self.images.generate(tier, None, size, None, CALIBRATION_SEED)
                image = await asyncio.wait_for(making, CALIBRATION_TIMEOUT_S)
        except (TierflowError, TimeoutError):
            self._capabilities.pop(tier, None)
            return
        self.sizes.observe(tier, size, len(image.png))
        levels = levels_from_stages(image.stages, image.elapsed_s)
        if levels:
            self.level_s[tier] = levels
        self.compute_256_s[tier] = levels.get(CALIBRATION_RESOLUTION, image.elapsed_s)

    def compute_s(self, tier: Tier, level: int) -> float:
        """Seconds of the tier's compute for one image of ``level`` px: measured per stage where the
        model reports its stages, else its 256 px image scaled by the area."""
        measured = self.level_s.get(tier, {})
        if level in measured:
            return measured[level]
        return self.compute_256_s[tier] * (level / CALIBRATION_RESOLUTION) ** 2

    def clip_units(self, tier: Tier, frames: int, level: int) -> float:
        """A clip's cost on ``tier`` in frames of 256 px: the unit the matrix's clip row learns seconds per.
        Each frame costs about one image of its level (a sampler run and the upsamplers up to ``level``),
        so a frame of ``level`` px weighs what the tier's own ``level`` image costs over its 256 px one:
        a cost that grew with the area alone put a refined 512 px frame at 4 units where the cloud
        measured 1.2 (its sampler and refiner run at every level) and predicted its clips 4x slow."""
        return frames * self.compute_s(tier, level) / self.compute_s(tier, CALIBRATION_RESOLUTION)

    def _network_up(self) -> bool:
        return self.lm.network_up if self.lm is not None else True

    def hop_s(
        self, tier: Tier, download_bytes: int, upload_bytes: int = 0
    ) -> tuple[float, float, str | None]:
        """Seconds to bring ``download_bytes`` (an image, a clip) from ``tier`` to the device, after
        sending it ``upload_bytes`` (an edit's picture); the seconds spent receiving; the radio."""
        if tier is Tier.DEVICE or self.lm is None:
            return 0.0, 0.0, None
        link = self.lm.link_state(Tier.DEVICE, tier)
        profile = self.lm.link_profiles.get(frozenset((Tier.DEVICE, tier)))
        radio = profile.name if profile is not None else None
        if link is None:
            return math.inf, math.inf, radio
        receive = transfer_s(download_bytes, link.down_bps)
        send = transfer_s(upload_bytes, link.up_bps) if upload_bytes else 0.0
        return link.rtt_s + link.overhead_s + send + receive, receive, radio

    @staticmethod
    def _row(level: int, edit: ImageEdit | None) -> TaskKind:
        """The matrix row an image learns in: its level's, or the edits' (an edit's time includes its
        picture's upload and the repaint; the row's learned ratio to its prior carries over between
        levels, :meth:`TaskResourceMatrix.set_prior`)."""
        return TaskKind.IMAGE_EDIT if edit is not None else TaskKind.image(level)

    def _image_prior(
        self, tier: Tier, level: int, upload: int
    ) -> tuple[float, float, float, str | None, int]:
        """The measured compute of a ``level`` image on ``tier``, its trip (``upload`` bytes up, the
        picture down), the seconds spent receiving, the radio and the picture's expected bytes."""
        size = self.sizes.expect(tier, level)
        hop, receive, radio = self.hop_s(tier, size, upload)
        return self.compute_s(tier, level), hop, receive, radio, size

    def offers(
        self, capabilities: dict[Tier, ImageCapability], resolution: int, edit: ImageEdit | None = None
    ) -> tuple[list[Offer], dict[Tier, float], dict[Offer, float]]:
        """Offers at every level up to ``resolution`` each tier can make (those under the SLA's
        ``min_resolution`` miss it: a degraded answer, or the best offer a refusal names); the device
        energy per tier (for the largest size it offers) and per offer. ``edit``: only tiers whose model
        repaints a given picture offer anything, and the picture travels up to them first."""
        upload = _upload_bytes(edit)
        offers: list[Offer] = []
        energy: dict[Tier, float] = {}
        per_offer: dict[Offer, float] = {}
        for tier in Tier:
            cap = capabilities.get(tier)
            reachable = not math.isinf(self.hop_s(tier, image_bytes(CALIBRATION_RESOLUTION))[0])
            usable = cap is not None and tier in self.compute_256_s and reachable
            usable = usable and (edit is None or bool(cap and cap.can_edit))
            self.router.matrix.set_available(tier, usable)
            if cap is None or not usable:
                offers.append(Offer(tier, "base", resolution))  # infeasible: the decision says why
                continue
            levels = [
                r for r in IMAGE_RESOLUTIONS
                if r <= resolution and (cap.max_resolution is None or r <= cap.max_resolution)
            ]
            for level in levels:
                compute, hop, receive, radio, size = self._image_prior(tier, level, upload)
                task = self._row(level, edit)
                self.router.matrix.set_prior(task, tier, compute + hop)
                seconds = self.router.matrix.predict(task, tier)
                assert seconds is not None  # a prior was just set
                offer = Offer(tier, quality_of(cap), level, latency_s=seconds)
                offers.append(offer)
                power = self.router.power
                if radio is not None:
                    power = power.model_copy(update={"radio": radio_for_profile(radio)})
                device_compute = compute if tier is Tier.DEVICE else 0.0
                received = size if tier is not Tier.DEVICE else 0
                energy[tier] = per_offer[offer] = power.energy_j(
                    seconds, device_compute, received_bytes=received, receive_s=receive
                )
        return offers, energy, per_offer

    async def generate(
        self,
        prompt: str | None,
        resolution: int,
        sla: SLA,
        *,
        seed: int | None = None,
        battery: BatteryState | None = None,
        metered: bool | None = None,
        pin: Tier | None = None,
        edit: ImageEdit | None = None,
    ) -> ImageRoute:
        """One image of up to ``resolution`` px (at least ``sla.min_resolution``, default the size asked);
        ``edit``: the picture repainted under ``prompt``."""
        task = TaskKind.image(resolution)  # an InvalidInputError names the levels
        if sla.min_resolution is None:  # nothing smaller is acceptable unless the SLA says so
            sla = dataclasses.replace(sla, min_resolution=resolution)
        elif sla.min_resolution > resolution:
            raise InvalidInputError(
                f"sla.min_resolution {sla.min_resolution} is above the size asked for ({resolution})"
            )
        capabilities = await self.capabilities()  # measured at start: a first request pays nothing here
        started = time.perf_counter()
        offers, energy, per_offer = self.offers(capabilities, resolution, edit)
        decision = self.router.decide(
            task, sla, offers, self._network_up(), energy,
            battery=battery, metered=metered, pin=pin, offer_energy=per_offer,
        )
        return await self._run(decision, prompt, seed, started, edit)

    async def _run(
        self, decision: Decision, prompt: str | None, seed: int | None, started: float, edit: ImageEdit | None
    ) -> ImageRoute:
        def make(offer: Offer) -> Awaitable[TieredImage]:
            assert offer.resolution is not None  # image offers carry their size
            refine = offer.quality == "refined"
            return self.images.generate(offer.tier, prompt, offer.resolution, refine, seed, edit)

        offer, image, failed, degraded = await self._tries(decision, started, make)
        assert offer.resolution is not None
        task = self._row(offer.resolution, edit)
        if edit is not None:  # the edits' row holds the prior of the last level offered: this one's
            compute, hop, *_ = self._image_prior(offer.tier, offer.resolution, _upload_bytes(edit))
            self.router.matrix.set_prior(task, offer.tier, compute + hop)
        self.router.matrix.observe(task, offer.tier, image.wall_s)
        self.sizes.observe(offer.tier, offer.resolution, len(image.png))
        return ImageRoute(decision, image, offer.resolution, tuple(failed), degraded)

    async def _tries(
        self, decision: Decision, started: float, make: Callable[[Offer], Awaitable[_Made]]
    ) -> tuple[Offer, _Made, list[dict[str, str]], bool]:
        """The chosen offer, then the fallbacks still in time (any, with ``offline_ok``) until one
        answers: that offer, its result, the failed tries and whether the answer is degraded."""
        failed: list[dict[str, str]] = []
        tried: list[Alternative] = [decision.chosen]
        degraded = decision.degraded
        while True:
            alt = tried[-1]
            offer = alt.offer
            budget = None
            if decision.sla.max_latency_s is not None and not degraded:
                budget = max(decision.sla.max_latency_s - (time.perf_counter() - started), 0.0)
            try:
                made = await asyncio.wait_for(make(offer), budget)
            except (RecoverableError, TimeoutError) as exc:
                timed_out = isinstance(exc, TimeoutError)
                what = f"no answer within the {budget or 0:.3g} s left" if timed_out else str(exc)
                failed.append({"tier": offer.tier.value, "error": what})
                self.forget(offer.tier)
                gone = {f["tier"] for f in failed}
                elapsed = time.perf_counter() - started
                left = [a for a in fallbacks(decision, elapsed) if a.offer.tier.value not in gone]
                if not left and decision.sla.offline_ok:  # better late than nothing, and labelled so
                    left = [a for a in fallbacks(decision) if a.offer.tier.value not in gone]
                    degraded = bool(left)
                if not left:
                    tiers = ", ".join(f"{f['tier']}: {f['error']}" for f in failed)
                    raise TierUnavailableError(f"no tier could make it in time ({tiers})") from exc
                tried.append(left[0])
                degraded = degraded or not left[0].meets_sla  # a smaller or later answer than asked
                continue
            return offer, made, failed, degraded

    # --- clips ------------------------------------------------------------------------------------------

    def clip_offers(
        self, capabilities: dict[Tier, ImageCapability], frames: int, resolution: int
    ) -> tuple[list[Offer], dict[Tier, float], dict[Offer, float]]:
        """Offers of a clip from every tier whose model makes clips: each level up to ``resolution``
        and the tier's cap, at each of :func:`clip_lengths`; predicted seconds are the frames' compute
        (the matrix's learned seconds per frame of 256 x 256 px, scaled by :meth:`clip_units`; its prior
        the tier's 256 px image) plus the GIF's trip to the device."""
        offers: list[Offer] = []
        energy: dict[Tier, float] = {}
        per_offer: dict[Offer, float] = {}
        for tier in Tier:
            cap = capabilities.get(tier)
            reachable = not math.isinf(self.hop_s(tier, image_bytes(CALIBRATION_RESOLUTION))[0])
            calibrated = cap is not None and tier in self.compute_256_s and reachable
            self.router.matrix.set_available(tier, calibrated)
            if cap is None or not cap.can_edit or not calibrated:
                offers.append(Offer(tier, "base", resolution, latency_s=None, frames=frames))
                continue
            levels = [r for r in IMAGE_RESOLUTIONS if r <= resolution and (cap.max_resolution or r) >= r]
            self.router.matrix.set_prior(TaskKind.CLIP, tier, self.compute_s(tier, CALIBRATION_RESOLUTION))
            per_unit = self.router.matrix.predict(TaskKind.CLIP, tier)
            assert per_unit is not None  # a prior was just set
            for level in levels:
                for length in clip_lengths(frames):
                    compute = per_unit * self.clip_units(tier, length, level)
                    size = self.sizes.expect_clip(tier, length, level)
                    hop, receive, radio = self.hop_s(tier, size)
                    offer = Offer(tier, quality_of(cap), level, latency_s=compute + hop, frames=length)
                    offers.append(offer)
                    power = self.router.power
                    if radio is not None:
                        power = power.model_copy(update={"radio": radio_for_profile(radio)})
                    device_compute = compute if tier is Tier.DEVICE else 0.0
                    received = size if tier is not Tier.DEVICE else 0
                    energy[tier] = per_offer[offer] = power.energy_j(
                        compute + hop, device_compute, received_bytes=received, receive_s=receive
                    )
        return offers, energy, per_offer

    async def clip(
        self,
        prompt: str | None,
        frames: int,
        resolution: int,
        sla: SLA,
        *,
        seed: int | None = None,
        fps: float = DEFAULT_FPS,
        battery: BatteryState | None = None,
        metered: bool | None = None,
        pin: Tier | None = None,
    ) -> ClipRoute:
        """A clip of up to ``frames`` frames and ``resolution`` px: the router picks the tier, the size and
        the length within the SLA (the largest, then the longest, by default); fewer frames or a smaller
        size are the graceful degradation (``sla.min_resolution`` bounds the size)."""
        TaskKind.image(resolution)  # an InvalidInputError names the levels
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= 48:
            raise InvalidInputError(f"frames must be an integer 1..48, not {frames!r}")
        capabilities = await self.capabilities()
        started = time.perf_counter()
        offers, energy, per_offer = self.clip_offers(capabilities, frames, resolution)
        decision = self.router.decide(
            TaskKind.CLIP, sla, offers, self._network_up(), energy,
            battery=battery, metered=metered, pin=pin, offer_energy=per_offer,
        )

        def make(offer: Offer) -> Awaitable[TieredClip]:
            assert offer.resolution is not None and offer.frames is not None  # clip offers carry both
            return self.images.clip(offer.tier, prompt, offer.frames, offer.resolution, seed, fps)

        offer, clip, failed, degraded = await self._tries(decision, started, make)
        assert offer.resolution is not None
        units = self.clip_units(offer.tier, clip.frames, offer.resolution)
        self.router.matrix.observe(TaskKind.CLIP, offer.tier, clip.elapsed_s / units)  # per frame of 256 px
        self.sizes.observe_clip(offer.tier, clip.frames, offer.resolution, len(clip.gif))
        return ClipRoute(decision, clip, offer.resolution, tuple(failed), degraded)

