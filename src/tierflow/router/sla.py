"""SLA routing: which offer (tier, quality level, resolution) serves a request, and what to retry.

A request's ``sla`` (:class:`SLA`, parsed by :meth:`SLA.parse`) says how long it may take, the
least it accepts (``min_resolution`` for images, ``min_quality`` for text), whether a degraded
answer is better than none (``offline_ok``) and what to optimise (``prefer``). The caller lists
the :class:`Offer` s it can run -- for the bundled image generator e.g. the device up to 512 px
without the refiner, the edge up to 1024, the cloud at 2048 with the refiner; for text the
phone's early-exit INT8 target (``early_exit``) and the full model (``full``).

:func:`choose` decides, in this order:

1. **Feasible**: the routing rules allow the tier (forced / excluded), the energy policy allows
   it (``allowed``), it is reachable (without network only the device is) and available in the
   matrix, and a latency is predicted for it (the offer's own estimate, else the matrix's).
2. **Meets the SLA**: resolution >= ``min_resolution`` (offers without a resolution, i.e. text,
   are not held to it), quality >= ``min_quality`` on the offer's ladder, predicted latency <=
   ``max_latency``.
3. Among the offers that meet it, by ``prefer`` -- latency: fastest, then higher quality;
   quality: highest (resolution, then level), then fastest; energy: least device energy (the
   caller's per-tier estimate; a tier without one counts as the dearest), then fastest. Tiers in
   ``avoid`` (the energy policy's metered-network rule: the cloud) rank after all others.
4. Nothing meets it: the best feasible offer -- the highest quality among those that are in
   time, else the fastest -- is returned marked ``degraded`` when ``offline_ok``, otherwise
   :class:`SLAUnmetError` names it. Nothing feasible at all: :class:`TierUnavailableError`.

:func:`fallbacks` lists the offers to retry on when the chosen tier fails (other tiers, in the
same ranking; only offers that meet the SLA unless ``offline_ok``), and :func:`within_budget`
keeps those that still fit the latency budget left after ``elapsed_s``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tierflow.errors import InvalidInputError, TierUnavailableError, UserError
from tierflow.router.matrix import TaskResourceMatrix, parse_tier
from tierflow.router.rules import RoutingRules
from tierflow.types.tasks import IMAGE_RESOLUTIONS, Prefer, TaskKind
from tierflow.types.tiers import Tier

# Quality levels, lowest first, one ladder per kind of output. Levels compare only on one ladder.
TEXT_QUALITY: tuple[str, ...] = ("early_exit", "full")  # the phone's early-exit INT8 model < the full model
IMAGE_QUALITY: tuple[str, ...] = ("base", "refined")  # without < with the cloud's refiner
QUALITY_LADDERS: tuple[tuple[str, ...], ...] = (TEXT_QUALITY, IMAGE_QUALITY)
QUALITY_LEVELS: frozenset[str] = frozenset(level for ladder in QUALITY_LADDERS for level in ladder)

SLA_FIELDS = ("max_latency", "max_latency_s", "min_resolution", "min_quality", "offline_ok", "prefer")
_TIER_ORDER = {t: i for i, t in enumerate(Tier)}


class SLAFieldError(InvalidInputError):
    """An SLA field is unknown or impossible; ``field`` names it (HTTP 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"sla.{field}: {message}")
        self.field = field


def _ladder(level: str) -> tuple[str, ...]:
    for ladder in QUALITY_LADDERS:
        if level in ladder:
            return ladder
    raise InvalidInputError(f"unknown quality level {level!r} (one of: {', '.join(sorted(QUALITY_LEVELS))})")


# --- the SLA ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SLA:
    """What a request asks of its answer. Values are checked on construction (:class:`SLAFieldError`)."""

    max_latency_s: float | None = None
    min_resolution: int | None = None
    min_quality: str | None = None
    offline_ok: bool = False
    prefer: Prefer = Prefer.LATENCY

    def __post_init__(self) -> None:
        latency = self.max_latency_s
        if latency is not None:
            if isinstance(latency, bool) or not isinstance(latency, int | float):
                raise SLAFieldError("max_latency", f"must be a number of seconds, got {latency!r}")
            if not (math.isfinite(latency) and latency > 0.0):
                raise SLAFieldError("max_latency", f"must be a finite number of seconds > 0, got {latency!r}")
            object.__setattr__(self, "max_latency_s", float(latency))
        res = self.min_resolution
        if res is not None and (isinstance(res, bool) or res not in IMAGE_RESOLUTIONS):
            raise SLAFieldError(
                "min_resolution",
                f"no image level for {res!r} (one of: {', '.join(str(r) for r in IMAGE_RESOLUTIONS)})",
            )
        if self.min_quality is not None and self.min_quality not in QUALITY_LEVELS:
            raise SLAFieldError(
                "min_quality",
                f"unknown level {self.min_quality!r} (text: {', '.join(TEXT_QUALITY)}; "
                f"images: {', '.join(IMAGE_QUALITY)})",
            )
        if not isinstance(self.offline_ok, bool):
            raise SLAFieldError("offline_ok", f"must be true or false, got {self.offline_ok!r}")
        try:
            object.__setattr__(self, "prefer", Prefer.parse(self.prefer))
        except InvalidInputError as exc:
            raise SLAFieldError("prefer", str(exc)) from None

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> SLA:
        """An SLA from a request body's ``sla`` (``None`` = no constraints).

        Fields: ``max_latency`` (seconds; ``max_latency_s`` is accepted too), ``min_resolution``,
        ``min_quality``, ``offline_ok``, ``prefer``. An unknown field or an impossible value
        raises :class:`SLAFieldError` (an InvalidInputError) naming the field.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"sla must be an object, got {data!r}")
        for key in data:
            if key not in SLA_FIELDS:
                raise SLAFieldError(str(key), f"unknown field (known: {', '.join(SLA_FIELDS)})")
        if "max_latency" in data and "max_latency_s" in data:
            raise SLAFieldError("max_latency_s", "give max_latency or max_latency_s, not both")
        latency = data.get("max_latency", data.get("max_latency_s"))
        offline_ok = data.get("offline_ok", False)
        prefer = data.get("prefer", Prefer.LATENCY)
        if prefer is None:
            prefer = Prefer.LATENCY
        return cls(
            max_latency_s=latency,
            min_resolution=data.get("min_resolution"),
            min_quality=data.get("min_quality"),
            offline_ok=offline_ok,
            prefer=prefer,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_latency": self.max_latency_s,
            "min_resolution": self.min_resolution,
            "min_quality": self.min_quality,
            "offline_ok": self.offline_ok,
            "prefer": self.prefer.value,
        }


# --- offers and decisions --------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """Something the caller can run: a tier, a quality level and (for images) a resolution.

    ``latency_s`` is the caller's own estimate (e.g. the planner's for a split); None = the matrix's.
    """

    tier: Tier
    quality: str
    resolution: int | None = None
    latency_s: float | None = None
    frames: int | None = None  # clips: how many frames

    def __post_init__(self) -> None:
        object.__setattr__(self, "tier", parse_tier(self.tier))
        _ladder(self.quality)
        if self.resolution is not None and (
            isinstance(self.resolution, bool) or self.resolution not in IMAGE_RESOLUTIONS
        ):
            raise InvalidInputError(f"offer resolution {self.resolution!r} has no image level")
        if self.frames is not None and (isinstance(self.frames, bool) or not 1 <= self.frames < 1000):
            raise InvalidInputError(f"offer frames must be 1..999, got {self.frames!r}")
        if self.latency_s is not None and not (
            isinstance(self.latency_s, int | float) and math.isfinite(self.latency_s) and self.latency_s >= 0
        ):
            raise InvalidInputError(f"offer latency_s must be a finite number >= 0, got {self.latency_s!r}")

    def describe(self) -> str:
        """``edge base 1024 px``."""
        size = f" {self.resolution} px" if self.resolution is not None else ""
        frames = f" x {self.frames} frames" if self.frames is not None else ""
        return f"{self.tier} {self.quality}{size}{frames}"

    def quality_key(self) -> tuple[int, int]:
        """Higher is better: the resolution first (0 for text), then a clip's frames, then the level on
        its ladder (resolution and frames in one number, frames < 1000)."""
        return ((self.resolution or 0) * 1000 + (self.frames or 0), _ladder(self.quality).index(self.quality))


@dataclass(frozen=True)
class Alternative:
    """One offer as :func:`choose` saw it: its prediction and why it was or was not chosen."""

    offer: Offer
    predicted_s: float | None
    energy_j: float | None
    feasible: bool
    meets_sla: bool
    chosen: bool
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": self.offer.tier.value,
            "quality": self.offer.quality,
            "resolution": self.offer.resolution,
            "frames": self.offer.frames,
            "predicted_s": self.predicted_s,
            "energy_j": self.energy_j,
            "feasible": self.feasible,
            "meets_sla": self.meets_sla,
            "chosen": self.chosen,
            "why": self.why,
        }


@dataclass(frozen=True)
class Decision:
    """Where a request goes. ``alternatives`` are ranked: the chosen first, then the other feasible
    offers in retry order, then the infeasible ones."""

    task: TaskKind
    sla: SLA
    chosen: Alternative
    degraded: bool
    alternatives: tuple[Alternative, ...]
    reason: str

    @property
    def tier(self) -> Tier:
        return self.chosen.offer.tier

    @property
    def quality(self) -> str:
        return self.chosen.offer.quality

    @property
    def resolution(self) -> int | None:
        return self.chosen.offer.resolution

    @property
    def predicted_s(self) -> float:
        assert self.chosen.predicted_s is not None  # a chosen offer always has a prediction
        return self.chosen.predicted_s

    @property
    def energy_j(self) -> float | None:
        return self.chosen.energy_j

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts for a response's ``route``."""
        return {
            "task": self.task.value,
            "tier": self.tier.value,
            "quality": self.quality,
            "resolution": self.resolution,
            "predicted_s": self.predicted_s,
            "energy_j": self.energy_j,
            "degraded": self.degraded,
            "reason": self.reason,
            "sla": self.sla.to_dict(),
            "alternatives": [a.to_dict() for a in self.alternatives],
        }


class SLAUnmetError(UserError):
    """No feasible offer meets the SLA and ``offline_ok`` is false (HTTP 422); ``best`` names the best."""

    def __init__(self, message: str, best: Alternative, alternatives: tuple[Alternative, ...]) -> None:
        super().__init__(message)
        self.best = best
        self.alternatives = alternatives


# --- choosing --------------------------------------------------------------------------------


def _matrix_kind(task: TaskKind, offer: Offer) -> TaskKind:
    """The matrix row an offer's latency comes from: an image task at another size reads that size's row."""
    if task.resolution is not None and offer.resolution is not None:
        return TaskKind.image(offer.resolution)
    return task


def _unmet(offer: Offer, predicted: float, sla: SLA) -> list[str]:
    misses = []
    res = offer.resolution
    if sla.min_resolution is not None and res is not None and res < sla.min_resolution:
        misses.append(f"{offer.resolution} px < min_resolution {sla.min_resolution}")
    if sla.min_quality is not None:
        ladder = _ladder(offer.quality)
        if sla.min_quality not in ladder:
            raise SLAFieldError(
                "min_quality",
                f"{sla.min_quality!r} is not a level of this task's offers ({', '.join(ladder)})",
            )
        if ladder.index(offer.quality) < ladder.index(sla.min_quality):
            misses.append(f"quality {offer.quality} < min_quality {sla.min_quality}")
    if sla.max_latency_s is not None and predicted > sla.max_latency_s:
        misses.append(f"predicted {predicted:.3g} s > max_latency {sla.max_latency_s:g} s")
    return misses


def _in_time(alt: Alternative, sla: SLA) -> bool:
    return sla.max_latency_s is None or (alt.predicted_s is not None and alt.predicted_s <= sla.max_latency_s)


def _preference_key(
    alt: Alternative, prefer: Prefer, avoid: frozenset[Tier], energy_weight: float = 0.0
) -> tuple[Any, ...]:
    offer, predicted = alt.offer, alt.predicted_s or 0.0
    res, level = offer.quality_key()
    energy = alt.energy_j if alt.energy_j is not None else math.inf
    # the planner's score: a second of latency, or 1 / energy_weight joules of the device's battery
    score = predicted + (energy_weight * alt.energy_j if energy_weight and alt.energy_j is not None else 0.0)
    if prefer is Prefer.QUALITY:
        key: tuple[Any, ...] = (-res, -level, score)
    elif prefer is Prefer.ENERGY:
        key = (energy, predicted, -res, -level)
    else:
        key = (score, -res, -level)
    return (offer.tier in avoid, *key, _TIER_ORDER[offer.tier])


def _best_effort_key(alt: Alternative, sla: SLA, avoid: frozenset[Tier]) -> tuple[Any, ...]:
    """Among offers that miss the SLA: in time first (highest quality, then fastest), then the fastest."""
    res, level = alt.offer.quality_key()
    predicted = alt.predicted_s or 0.0
    if _in_time(alt, sla):
        return (0, alt.offer.tier in avoid, -res, -level, predicted, _TIER_ORDER[alt.offer.tier])
    return (1, alt.offer.tier in avoid, predicted, -res, -level, _TIER_ORDER[alt.offer.tier])


_CHOSEN_BY = {
    Prefer.LATENCY: "the fastest",
    Prefer.QUALITY: "the highest quality",
    Prefer.ENERGY: "the least device energy",
}


def choose(
    task: TaskKind,
    sla: SLA,
    matrix: TaskResourceMatrix,
    rules: RoutingRules,
    network_up: bool,
    candidates: Iterable[Offer],
    *,
    allowed: Iterable[Tier] | None = None,
    avoid: Iterable[Tier] = (),
    prefer: Prefer | None = None,
    energy_j: Mapping[Tier, float] | None = None,
    energy_weight: float = 0.0,
    offer_energy_j: Mapping[Offer, float] | None = None,
) -> Decision:
    """The offer that serves ``task`` under ``sla`` (the module docstring gives the rules).

    ``allowed`` / ``avoid`` / ``prefer`` come from the energy policy
    (:func:`tierflow.router.energy.apply`): tiers it allows (None = all), tiers to rank last,
    and the preference that replaces ``sla.prefer``. ``energy_j`` is the caller's predicted
    device energy per tier (the planner's power model), used by ``prefer=energy`` and reported.
    ``energy_weight`` (s/J, the energy policy's effective weight at this battery level) prices a
    joule in seconds when offers are ranked by latency (and, after quality, by quality): the
    planner's ``latency + w * E``. ``offer_energy_j`` gives an offer its own estimate where two
    offers on one tier differ (the device's full model and its early-exit one).
    """
    task = TaskKind.parse(task)
    offers = tuple(candidates)
    if not offers:
        raise InvalidInputError(f"no offers to route {task} to")
    allowed_set = None if allowed is None else frozenset(parse_tier(t) for t in allowed)
    avoid_set = frozenset(parse_tier(t) for t in avoid)
    how = Prefer.parse(prefer) if prefer is not None else sla.prefer
    energies: dict[Tier, float] = {}
    for tier_name, joules in (energy_j or {}).items():
        if isinstance(joules, bool) or not isinstance(joules, int | float) or not (
            math.isfinite(joules) and joules >= 0
        ):
            raise InvalidInputError(
                f"energy estimate of {tier_name} must be a finite number >= 0, got {joules!r}"
            )
        energies[parse_tier(tier_name)] = float(joules)

    infeasible: list[Alternative] = []
    meeting: list[Alternative] = []
    missing: list[tuple[Alternative, list[str]]] = []
    for offer in offers:
        tier = offer.tier
        why: str | None = rules.why_not(task, tier)
        if why is None and allowed_set is not None and tier not in allowed_set:
            why = f"the energy policy keeps {task} off the {tier}"
        if why is None and tier is not Tier.DEVICE and not network_up:
            why = f"the {tier} is unreachable: no network"
        if why is None and not matrix.available(tier):
            why = f"the {tier} is unavailable"
        row = _matrix_kind(task, offer)
        predicted = offer.latency_s if offer.latency_s is not None else matrix.predict(row, tier)
        if why is None and predicted is None:
            why = f"no latency known for {row} on the {tier} (no prior, no observation)"
        energy = (offer_energy_j or {}).get(offer, energies.get(tier))
        if why is not None:
            infeasible.append(
                Alternative(offer, predicted, energy, False, False, False, f"infeasible: {why}")
            )
            continue
        assert predicted is not None
        misses = _unmet(offer, predicted, sla)
        alt = Alternative(offer, predicted, energy, True, not misses, False, "")
        if misses:
            missing.append((alt, misses))
        else:
            meeting.append(alt)

    if not meeting and not missing:
        reasons = "; ".join(f"{a.offer.describe()}: {a.why.removeprefix('infeasible: ')}" for a in infeasible)
        raise TierUnavailableError(f"no tier can run {task} now ({reasons})")

    if isinstance(energy_weight, bool) or not (math.isfinite(energy_weight) and energy_weight >= 0):
        raise InvalidInputError(f"energy_weight must be a finite number >= 0, got {energy_weight!r}")
    meeting.sort(key=lambda a: _preference_key(a, how, avoid_set, energy_weight))
    missing.sort(key=lambda am: _best_effort_key(am[0], sla, avoid_set))
    ranked: list[Alternative] = []
    for i, alt in enumerate(meeting):
        if i == 0:
            why = f"chosen: {_CHOSEN_BY[how]} of {len(meeting)} offer(s) meeting the SLA"
        else:
            why = f"meets the SLA; ranked #{i + 1} by {how.value}"
        if alt.offer.tier in avoid_set:
            why += f" (the {alt.offer.tier} ranks last: avoided by the energy policy)"
        ranked.append(_with(alt, why=why + _load_note(matrix, alt.offer.tier), chosen=i == 0))
    for alt, misses in missing:
        why = "misses the SLA: " + "; ".join(misses) + _load_note(matrix, alt.offer.tier)
        ranked.append(_with(alt, why=why))

    best = ranked[0]
    degraded = not best.meets_sla
    best_misses = "" if not degraded else "; ".join(missing[0][1])
    if degraded:
        if not sla.offline_ok:
            raise SLAUnmetError(
                f"no offer meets the SLA for {task}: the best is {best.offer.describe()} at "
                f"{best.predicted_s:.3g} s predicted ({best_misses})",
                best,
                tuple(ranked) + tuple(infeasible),
            )
        best = _with(best, why=f"chosen (degraded, offline_ok): the best feasible offer; {best_misses}",
                     chosen=True)
        ranked[0] = best
    alternatives = tuple(ranked) + tuple(infeasible)
    assert best.predicted_s is not None
    head = f"{best.offer.describe()} in {best.predicted_s:.3g} s predicted"
    if degraded:
        reason = f"{head}, degraded: nothing meets the SLA ({best_misses}); offline_ok takes the best"
    else:
        reason = f"{head}: {_CHOSEN_BY[how]} of {len(meeting)} offer(s) meeting the SLA"
        if prefer is not None and how is not sla.prefer:
            reason += f" (prefer {how.value} by the energy policy)"
    return Decision(
        task=task, sla=sla, chosen=best, degraded=degraded, alternatives=alternatives, reason=reason
    )


def _load_note(matrix: TaskResourceMatrix, tier: Tier) -> str:
    """What a prediction owes to the tier's load (other callers' work), or nothing when it is idle."""
    load = matrix.load(tier)
    if load <= 0.0:
        return ""
    return f" (the {tier} is {load:.0%} busy with other work: predicted {matrix.slowdown(tier):.2g}x slower)"


def _with(alt: Alternative, *, why: str, chosen: bool = False) -> Alternative:
    return Alternative(alt.offer, alt.predicted_s, alt.energy_j, alt.feasible, alt.meets_sla, chosen, why)


# --- retrying --------------------------------------------------------------------------------


def fallbacks(decision: Decision, elapsed_s: float | None = None) -> tuple[Alternative, ...]:
    """The offers to retry on when the chosen tier fails, best first.

    Feasible offers on other tiers than the chosen one, in the decision's ranking; only those that
    meet the SLA unless it is ``offline_ok``. With ``elapsed_s``, only those that still fit the
    budget left (:func:`within_budget`).
    """
    failed = decision.tier
    left = tuple(
        a for a in decision.alternatives
        if a.feasible and not a.chosen and a.offer.tier != failed and (a.meets_sla or decision.sla.offline_ok)
    )
    return left if elapsed_s is None else within_budget(left, elapsed_s, decision.sla)


def within_budget(offers: Sequence[Alternative], elapsed_s: float, sla: SLA) -> tuple[Alternative, ...]:
    """The offers whose predicted latency fits in ``max_latency - elapsed_s`` (all, without a max_latency)."""
    if isinstance(elapsed_s, bool) or not isinstance(elapsed_s, int | float) or not (
        math.isfinite(elapsed_s) and elapsed_s >= 0
    ):
        raise InvalidInputError(f"elapsed_s must be a finite number of seconds >= 0, got {elapsed_s!r}")
    if sla.max_latency_s is None:
        return tuple(offers)
    remaining = sla.max_latency_s - elapsed_s
    return tuple(a for a in offers if a.predicted_s is not None and a.predicted_s <= remaining)
