"""The entry point's router: which placement serves a generation, under its SLA, the network and the battery.

The pure rules live in :mod:`tierflow.router` (the matrix, the hard rules, SLA choice, the energy
policy); this module feeds them what the deployment knows now and learns from what happened.

For text, an offer per tier: the fastest placement of the LM's layers (``ShardedLM.placements``)
whose deepest holder is that tier -- ``device`` runs every layer on the device and needs no
network, ``edge`` the best placement over device and edge, ``cloud`` the best one that reaches
the cloud. The matrix rows ``text_short`` / ``text_long`` hold **seconds per generated token**
per tier: their prior is the span planner's live prediction for that placement (measured layer
speeds, each link's estimate), re-set before every decision, and they learn the ratio of what
decoding really took (:meth:`TaskResourceMatrix.set_prior`). A request's predicted latency is
the prefill of what the placement does not hold yet (the whole history when the context moves)
plus ``max_tokens`` times the matrix's per-token figure.

Energy per offer is the planner's device power model (:class:`~tierflow.planner.power.DevicePower`)
over the predicted latency, the device's own layers and the bytes its radio moves (a hidden state
up and a token id down per step, the prompt's hidden states once).

Quality: every placement runs the full model (``full`` on the text ladder). Where the device node
keeps the phone's early-exit INT8 model (:mod:`tierflow.engine.early_exit`), it is one more offer
on the device, ``early_exit``, below ``full``; an SLA without ``min_quality`` asks for ``full``, so
the early-exit model serves only requests that accept it, or (degraded, labelled) ``offline_ok``
ones that nothing at ``full`` can meet.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tierflow.engine.early_exit import EarlyExitLM
from tierflow.engine.sharded import ShardedLM, Spans
from tierflow.errors import PlanError, TierUnavailableError
from tierflow.model.lm_layers import Span
from tierflow.planner.power import DevicePower, radio_for_profile
from tierflow.planner.spans import ORDER, TOKEN_BYTES, SpanPlan
from tierflow.router.energy import BatteryState, EnergyPolicy, apply, on_battery, read_battery
from tierflow.router.matrix import TaskResourceMatrix
from tierflow.router.rules import RoutingRules
from tierflow.router.sla import SLA, Decision, Offer, choose
from tierflow.types.links import transfer_s
from tierflow.types.tasks import TaskKind
from tierflow.types.tiers import Tier

TEXT_LONG_TOKENS = 128  # a generation of more new tokens than this is ``text_long``
TEXT_QUALITY_FULL = "full"
TEXT_QUALITY_EARLY_EXIT = "early_exit"


def text_task(max_tokens: int) -> TaskKind:
    return TaskKind.TEXT_LONG if max_tokens > TEXT_LONG_TOKENS else TaskKind.TEXT_SHORT


def deepest(spans: Mapping[Tier, Any]) -> Tier:
    """The holder farthest from the device (the device when it holds everything)."""
    return max(spans, key=ORDER.index) if spans else Tier.DEVICE


@dataclass(frozen=True)
class TextRoute:
    """A routing decision for a generation and the placement it runs on (None: the early-exit model)."""

    decision: Decision
    task: TaskKind
    spans: Spans | None

    @property
    def early_exit(self) -> bool:
        return self.decision.quality == TEXT_QUALITY_EARLY_EXIT

    def to_dict(self) -> dict[str, Any]:
        return self.decision.to_dict()


@dataclass
class DeviceConditions:
    """The device's battery and whether its network is metered (the deployment's; a request may override).

    ``battery`` is what a client reported; without a report the router reads this machine's own
    battery (psutil) at each decision, so a laptop entry point that is plugged in is seen to be."""

    battery: BatteryState | None = None
    metered: bool = False
    network: str | None = None  # the access network the client last reported (a link profile name)


@dataclass
class EntryRouter:
    """Routes the entry point's requests (see the module docstring); one per deployment."""

    matrix: TaskResourceMatrix = field(default_factory=TaskResourceMatrix)
    rules: RoutingRules = field(default_factory=RoutingRules)
    policy: EnergyPolicy = field(default_factory=EnergyPolicy)
    conditions: DeviceConditions = field(default_factory=DeviceConditions)
    power: DevicePower = field(default_factory=DevicePower)

    def battery_now(self) -> BatteryState | None:
        """The battery the next decision sees: a client's last report, else this machine's own now."""
        return self.conditions.battery if self.conditions.battery is not None else read_battery()

    def lane_polling(self, battery: BatteryState | None) -> bool:
        """Whether the entry point's decode lanes may poll for replies (transport/lane.py) with the
        device's ``battery`` (:meth:`battery_now`): not on battery, where polling spends the device's
        energy for a shorter hand-off."""
        return not on_battery(self.policy, battery)

    def report(self, battery: BatteryState | None = None, metered: bool | None = None) -> None:
        """What the client says of its device now (kept for later requests of the deployment)."""
        if battery is not None:
            self.conditions.battery = battery
        if metered is not None:
            self.conditions.metered = metered

    # --- text ------------------------------------------------------------------------------------

    def text_offers(
        self,
        lm: ShardedLM,
        task: TaskKind,
        current: Spans | None,
        history: int,
        new_prompt: int,
        max_tokens: int,
    ) -> tuple[list[Offer], dict[Tier, SpanPlan], dict[Tier, float]]:
        """One offer per tier that can hold the deepest span now, with its placement and device energy."""
        best: dict[Tier, SpanPlan] = {}
        for plan in lm.placements():  # fastest first: the first per deepest tier is that tier's best
            best.setdefault(deepest(plan.spans), plan)
        if current is not None and lm.holders_available(current):
            # the context's own placement (planned, fixed or migrated) stands for its tier: no rebuild
            with contextlib.suppress(PlanError):
                best[deepest(current)] = lm.predict(current)
        for tier, record in lm.tiers.items():  # feasible now: up, and some placement reaches it
            self.matrix.set_available(tier, record.available and tier in best)
        offers: list[Offer] = []
        energy: dict[Tier, float] = {}
        for tier, plan in best.items():
            spans = {t: Span(a, b) for t, (a, b) in plan.spans.items()}
            self.matrix.set_prior(task, tier, plan.token_s)
            per_token = self.matrix.predict(task, tier)
            assert per_token is not None  # a prior was just set
            stays = current is not None and dict(current) == spans and lm.holders_available(current)
            fed = new_prompt if stays else history  # moving the context rebuilds its whole KV
            prefill = lm.prefill_s(spans, fed)
            latency = prefill + max_tokens * per_token
            offers.append(Offer(tier, TEXT_QUALITY_FULL, latency_s=latency))
            energy[tier] = self._text_energy(lm, plan, fed, max_tokens, latency)
        # tiers no placement reaches are offered too, so the decision says why they were not chosen
        offers += [Offer(t, TEXT_QUALITY_FULL) for t in lm.tiers if t not in best]
        return offers, best, energy

    def _text_energy(self, lm: ShardedLM, plan: SpanPlan, fed: int, max_tokens: int, latency: float) -> float:
        device = plan.spans.get(Tier.DEVICE)
        layers = device[1] - device[0] + 1 if device else 0
        per_layer = lm.tiers[Tier.DEVICE].layer_s or 0.0
        compute = per_layer * layers * (max_tokens + fed)
        remote = [t for t in plan.spans if t is not Tier.DEVICE]
        if not remote:
            return self.power.energy_j(latency, compute)
        first = remote[0]
        profile = lm.link_profiles.get(frozenset((Tier.DEVICE, first)))
        power = self.power
        if profile is not None:  # the radio of the device's first link (wifi, LTE, ...)
            power = power.model_copy(update={"radio": radio_for_profile(profile.name)})
        up_bps = profile.up_bps if profile and not profile.offline else 1e9
        down_bps = profile.down_bps if profile and not profile.offline else 1e9
        hidden = lm.costs.hidden_bytes_per_token if device else 4  # no device layers: token ids go up
        sent = hidden * (max_tokens + fed)
        received = TOKEN_BYTES * max_tokens
        return power.energy_j(
            latency,
            compute,
            sent_bytes=sent,
            send_s=transfer_s(sent, up_bps),
            received_bytes=received,
            receive_s=transfer_s(received, down_bps),
        )

    def route_text(
        self,
        lm: ShardedLM,
        sla: SLA,
        *,
        max_tokens: int,
        current: Spans | None,
        history: int,
        new_prompt: int,
        battery: BatteryState | None = None,
        metered: bool | None = None,
        pin: Tier | None = None,
        early_exit: EarlyExitLM | None = None,
    ) -> TextRoute:
        """Choose the placement of a generation of ``max_tokens`` after ``history`` tokens, of which
        the context's placement ``current`` lacks ``new_prompt``. SLAUnmetError / TierUnavailableError
        when nothing can serve it (see :func:`tierflow.router.sla.choose`)."""
        task = text_task(max_tokens)
        if sla.min_quality is None:  # nothing below the full model unless the SLA says so
            sla = dataclasses.replace(sla, min_quality=TEXT_QUALITY_FULL)
        offers, plans, energy = self.text_offers(lm, task, current, history, new_prompt, max_tokens)
        offer_energy: dict[Offer, float] = {}
        lite: Offer | None = None
        if early_exit is not None and early_exit.fits(history):
            seconds = early_exit.predict_s(history, max_tokens)
            lite = Offer(Tier.DEVICE, TEXT_QUALITY_EARLY_EXIT, latency_s=seconds)
            if Tier.DEVICE not in plans:  # the full model has no room here: the early exit is the offer
                offers = [o for o in offers if o.tier is not Tier.DEVICE]
                self.matrix.set_available(Tier.DEVICE, lm.tiers[Tier.DEVICE].available)
            offers.append(lite)
            offer_energy[lite] = self.power.energy_j(seconds, seconds)  # the device computes throughout
        if not plans and lite is None:
            down = ", ".join(t.value for t, r in lm.tiers.items() if not r.available) or "none"
            raise TierUnavailableError(f"no placement of the model's layers can run now (tiers down: {down})")
        decision = self.decide(
            task, sla, offers, lm.network_up, energy,
            battery=battery, metered=metered, pin=pin, offer_energy=offer_energy,
        )
        if decision.quality == TEXT_QUALITY_EARLY_EXIT:
            assert early_exit is not None
            return TextRoute(decision, task, None)
        plan = plans[decision.tier]
        return TextRoute(decision, task, {t: Span(a, b) for t, (a, b) in plan.spans.items()})

    def decide(
        self,
        task: TaskKind,
        sla: SLA,
        offers: list[Offer],
        network_up: bool,
        energy: dict[Tier, float],
        *,
        battery: BatteryState | None,
        metered: bool | None,
        pin: Tier | None,
        offer_energy: dict[Offer, float] | None = None,
    ) -> Decision:
        """:func:`tierflow.router.sla.choose` under the energy policy and the rules (text and images).

        ``battery`` / ``metered`` None: the device's conditions as last reported. A pinned request
        names its tier: the energy policy has no say over it (the hard rules still do)."""
        battery = battery if battery is not None else self.battery_now()
        metered = self.conditions.metered if metered is None else metered
        policy = apply(self.policy, None if pin else battery, bool(metered) and pin is None, sla)
        rules = self.rules if pin is None else self.rules.pinned(task, pin)
        decision = choose(
            task,
            sla,
            self.matrix,
            rules,
            network_up,
            offers,
            allowed=policy.allowed,
            avoid=policy.avoid,
            prefer=policy.prefer,
            energy_j=energy,
            energy_weight=policy.effective_energy_weight,
            offer_energy_j=offer_energy,
        )
        if not policy.reasons:
            return decision
        reason = f"{decision.reason}; {'; '.join(policy.reasons)}"
        return dataclasses.replace(decision, reason=reason)

    def observe_text(self, task: TaskKind, tier: Tier, decode_s: float, generated: int) -> None:
        """Learn a generation's decode seconds per token on ``tier`` (where its deepest span ran)."""
        if generated > 1:
            self.matrix.observe(task, tier, decode_s / (generated - 1))

    def snapshot(self) -> dict[str, Any]:
        """``GET /routing/matrix``: the matrix, the rules, the energy policy and the device's conditions."""
        battery = self.battery_now()
        return {
            **self.matrix.snapshot(),
            "units": {"text_short": "s/token", "text_long": "s/token", "clip": "s per frame of 256 x 256 px",
                      "other": "s/request"},
            "rules": self.rules.to_dict(),
            "energy_policy": self.policy.to_dict(),
            "device": {
                "battery": None
                if battery is None
                else {"level": battery.level, "charging": battery.charging},
                "metered": self.conditions.metered,
                "network": self.conditions.network,
            },
        }
