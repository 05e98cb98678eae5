"""Generation across tiers, driven from the entry point: the layer plan, prefill, decode, failover.

The entry point (the device node) owns a :class:`ShardedLM`. It knows the tiers, their measured
speed and memory, and plans which layers each holds (:func:`tierflow.planner.spans.plan_spans`,
or the user's fixed spans). A generation is:

1. **prefill** -- the tokens of the conversation the tiers do not hold yet (``tokens[kv_len:]``)
   go through the holders in chunks, each holder keeping the KV of its own layers;
2. **decode** -- one token per step through the holders; the last one samples it;
3. **recovery** -- a tier lost mid-generation (:class:`~tierflow.errors.TierUnavailableError`) is
   marked down, the layers are planned again over the tiers left, and the context's KV is
   rebuilt from its token history (a prefill from zero under the new plan, as Petals replays a
   failed server's inputs), after which decoding goes on where it stopped; a tier that lacks
   the KV it should hold (evicted, restarted: :class:`~tierflow.errors.KVMissingError`) is
   rebuilt the same way. With a seed or greedy decoding the tokens are the ones an
   uninterrupted run gives: each token's sampler is seeded by its position.

Nothing but token ids, hidden states and small headers crosses a link.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tierflow.engine.lm_hop import (
    ELAPSED_PREFIX,
    IDS,
    OP_LM_DROP,
    OP_LM_INFO,
    OP_LM_KV_MOVE,
    OP_LM_STEP,
    LMHop,
    RouteHop,
    encode_hops,
    encode_sampling,
    needs_recent,
)
from tierflow.errors import InvalidInputError, KVMissingError, PlanError, TierUnavailableError
from tierflow.model.lm_layers import LayerCosts, Span, check_cover, layer_costs
from tierflow.model.tokenizer import TextStream, Tokenizer
from tierflow.planner.snapshot import LinkState
from tierflow.planner.spans import TOKEN_BYTES, LMShape, SpanPlan, TierCapacity, plan_spans, score
from tierflow.runtime.lm import SamplingConfig
from tierflow.transport.messages import MetaValue, StageRequest, StageResponse
from tierflow.transport.route import COMPUTE_PREFIX
from tierflow.types.links import LinkProfile, chain, get_profile, transfer_s
from tierflow.types.quant import QuantMode
from tierflow.types.tiers import Tier

ORDER = (Tier.DEVICE, Tier.EDGE, Tier.CLOUD)
PREFILL_CHUNK = 64  # prompt tokens per prefill step (long prompts go in several)
PROBE_EVERY_S = 5.0  # how often a tier that is down is asked again
# A step's hop costs more than an empty request's round trip (sealing the hidden state, the tiers'
# dispatch): what generations measured beyond RTT and transfer is learned per link, so that the
# planner's per-hop term is a step's, not a ping's. Learned from generations of this many steps on.
LEARN_HOPS_MIN_STEPS = 8
LEARN_HOPS_WEIGHT = 0.3  # of the newest generation in the running mean
Spans = dict[Tier, Span]


def spans_text(spans: Mapping[Tier, Span]) -> dict[str, str]:
    return {t.value: str(s) for t, s in spans.items()}


def parse_spans(text: str | Mapping[str, str], num_layers: int) -> Spans:
    """``device=0-1,edge=2-4,cloud=5-6`` (inclusive layers, holders in tier order) as spans, checked."""
    items = (
        text.items()
        if isinstance(text, Mapping)
        else (part.split("=", 1) if "=" in part else (part, "") for part in text.split(",") if part.strip())
    )
    spans: Spans = {}
    for name, value in items:
        try:
            tier = Tier(name.strip())
        except ValueError:
            raise InvalidInputError(
                f"unknown tier {name.strip()!r} in spans (tiers: device, edge, cloud)"
            ) from None
        spans[tier] = Span.parse(value)
    ordered = {t: spans[t] for t in ORDER if t in spans}
    check_cover(list(ordered.values()), num_layers)
    return ordered


@dataclass
class StepStats:
    """What the steps of one generation cost, summed."""

    compute_s: dict[str, float] = field(default_factory=dict)
    hop_s: dict[tuple[str, str], float] = field(default_factory=dict)
    steps: int = 0

    def add(self, meta: Mapping[str, MetaValue], path: Sequence[str], wall_s: float) -> None:
        self.steps += 1
        compute = {
            k.removeprefix(COMPUTE_PREFIX): float(v) for k, v in meta.items() if k.startswith(COMPUTE_PREFIX)
        }
        elapsed = {
            k.removeprefix(ELAPSED_PREFIX): float(v) for k, v in meta.items() if k.startswith(ELAPSED_PREFIX)
        }
        for tier, seconds in compute.items():
            self.compute_s[tier] = self.compute_s.get(tier, 0.0) + seconds
        # hop i -> i+1: what tier i waited for, less what tier i+1 spent in all
        for a, b in zip(path, path[1:], strict=False):
            waited = elapsed.get(a, wall_s) - compute.get(a, 0.0)
            self.hop_s[(a, b)] = self.hop_s.get((a, b), 0.0) + max(waited - elapsed.get(b, 0.0), 0.0)


@dataclass
class GenerationEvent:
    """One streamed piece of a generation: a token (with the text it adds), or something that happened."""

    token: int | None = None
    text: str = ""
    event: dict[str, str] | None = None


@dataclass
class GenerationOutcome:
    """The whole generation, once it ended."""

    tokens: list[int]  # the conversation after it: history + prompt + generated
    kv_len: int  # how many of them the tiers hold KV for
    generated: list[int]
    spans: Spans
    stats: StepStats
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float
    decode_s: float
    events: list[dict[str, str]]

    @property
    def tokens_per_s(self) -> float:
        steps = max(len(self.generated) - 1, 0)
        return steps / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class TierRecord:
    tier: Tier
    available: bool = True
    layer_s: float | None = None
    memory_bytes: float | None = None
    last_probe: float = 0.0


class ShardedLM:
    """The entry point's view of one LM served across tiers (see the module docstring)."""

    def __init__(
        self,
        hop: LMHop,
        tokenizer: Tokenizer,
        *,
        model_name: str,
        tiers: Sequence[Tier] = ORDER,
        max_seq_len: int | None = None,
        fixed_spans: Spans | None = None,
        links: Mapping[frozenset[Tier], LinkProfile] | None = None,
        quant: QuantMode = QuantMode.RAW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if hop.tier != Tier.DEVICE.value:
            raise InvalidInputError("the entry point of a deployment is its device node")
        self.hop = hop
        self.clock = clock  # when a tier that is down is asked again (PROBE_EVERY_S)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_seq_len = max_seq_len
        self.quant = quant
        self.costs: LayerCosts = layer_costs(hop.runner.layered)
        self.num_layers = hop.runner.num_layers
        self.tiers = {t: TierRecord(t) for t in tiers}
        self.link_profiles = dict(links or {})
        # the part of a link past the device's access (device-cloud = access + backhaul), kept apart
        # so that a new access network (even offline for a while) is chained to it again
        self.link_far: dict[frozenset[Tier], LinkProfile] = {
            pair: get_profile(p.name.partition("+")[2])
            for pair, p in self.link_profiles.items()
            if "+" in p.name
        }
        self.link_rtt: dict[frozenset[Tier], float] = {}
        self.hop_overhead_s: dict[frozenset[Tier], float] = {}  # learned, see LEARN_HOPS_MIN_STEPS
        self.fixed = fixed_spans
        if fixed_spans is not None:
            check_cover(list(fixed_spans.values()), self.num_layers)
        self.plan: SpanPlan | None = None
        self.alternatives: list[SpanPlan] = []
        self.spans: Spans = dict(fixed_spans) if fixed_spans else {}
        self.eos = tokenizer.token_id("<|endoftext|>")
        self._plan_lock = asyncio.Lock()

    # --- what the tiers can do, and the plan --------------------------------------------------------

    @property
    def shape(self) -> LMShape:
        c = self.costs
        return LMShape(
            self.num_layers,
            c.layer_weight_bytes,
            c.embedding_bytes,
            c.head_bytes,
            c.kv_bytes_per_token,
            c.hidden_bytes_per_token,
            self.max_seq_len or 2048,
        )

    async def probe(self, tier: Tier) -> bool:
        """Ask ``tier`` what it can do (its measured speed, memory, its own links); False if it is down."""
        record = self.tiers[tier]
        record.last_probe = self.clock()
        try:
            if tier is Tier.DEVICE:
                meta = await self.hop.info()
            else:
                meta = (await self._call(tier, StageRequest(OP_LM_INFO))).meta
                # timed apart from the info call: the tier's first answer measures its own speed
                self.link_rtt[frozenset((Tier.DEVICE, tier))] = await self.hop.ping(tier.value)
        except TierUnavailableError:
            record.available = False
            return False
        record.available = True
        record.layer_s = float(meta["layer_s"])
        record.memory_bytes = float(meta["memory_bytes"]) if "memory_bytes" in meta else None
        for peer, rtt in json.loads(str(meta.get("peers_rtt", "{}"))).items():
            if peer in Tier.__members__.values() and peer != tier.value:
                self.link_rtt[frozenset((tier, Tier(peer)))] = float(rtt)
        return True

    async def start(self) -> SpanPlan | None:
        """Probe every tier and plan (or check the fixed spans)."""
        for tier in self.tiers:
            await self.probe(tier)
        return await self.replan()

    def _links(self) -> dict[frozenset[Tier], LinkState]:
        out: dict[frozenset[Tier], LinkState] = {}
        pairs = {
            frozenset(p)
            for p in ((Tier.DEVICE, Tier.EDGE), (Tier.DEVICE, Tier.CLOUD), (Tier.EDGE, Tier.CLOUD))
        }
        for pair in pairs | set(self.link_profiles) | set(self.link_rtt):
            a, b = sorted(pair, key=ORDER.index)
            rtt = self.link_rtt.get(pair)
            profile = self.link_profiles.get(pair)
            if rtt is None and profile is None:
                continue
            if rtt is not None and not np.isfinite(rtt):
                continue
            up = profile.up_bps if profile is not None and not profile.offline else 1e9
            down = profile.down_bps if profile is not None and not profile.offline else 1e9
            if profile is not None and profile.offline:
                continue
            out[pair] = LinkState(
                a=a.value,
                b=b.value,
                up_bps=up,
                down_bps=down,
                rtt_s=rtt if rtt is not None else (profile.rtt_s if profile else 0.0),
                overhead_s=self.hop_overhead_s.get(pair, 0.0),
            )
        return out

    def learn_hops(self, stats: StepStats) -> None:
        """Fold what a generation's hops cost beyond each link's RTT and transfer into the links the
        planner scores (``hop_overhead_s``)."""
        if stats.steps < LEARN_HOPS_MIN_STEPS:
            return
        links = self._links()
        for (a, b), total in stats.hop_s.items():
            pair = frozenset((Tier(a), Tier(b)))
            link = links.get(pair)
            if link is None:
                continue
            known = self.hop_overhead_s.get(pair, 0.0)
            expected = (
                link.rtt_s
                + transfer_s(self.costs.hidden_bytes_per_token, link.up_bps)
                + transfer_s(TOKEN_BYTES, link.down_bps)
            )
            extra = max(total / stats.steps - expected, 0.0)
            self.hop_overhead_s[pair] = (
                extra if pair not in self.hop_overhead_s else known + LEARN_HOPS_WEIGHT * (extra - known)
            )

    def _capacities(self) -> dict[Tier, TierCapacity]:
        return {
            t: TierCapacity(t, r.layer_s if r.layer_s is not None else 1.0, r.memory_bytes, r.available)
            for t, r in self.tiers.items()
            if r.available and r.layer_s is not None
        }

    def predict(self, spans: Mapping[Tier, Span]) -> SpanPlan:
        """What ``spans`` would cost per token now; PlanError if a span does not fit or cannot run."""
        return score(
            self.shape, self._capacities(), self._links(), {t: (s.first, s.last) for t, s in spans.items()}
        )

    async def set_access(self, profile: LinkProfile) -> None:
        """The device's own network changed (the OS says wifi, 4g, offline...): its links to the edge
        and the cloud are planned on ``profile`` from now on (the RTT measured on the old one is
        forgotten) and the layers are planned again."""
        access = {(Tier.DEVICE, t): self.access_profile(t, profile) for t in (Tier.EDGE, Tier.CLOUD)}
        await self.set_links(access)

    def access_profile(self, tier: Tier, access: LinkProfile) -> LinkProfile:
        """The device's link to ``tier`` over ``access``: the access alone, or chained to the part that
        goes on past it (device-cloud = access + backhaul, ``link_far``)."""
        far = self.link_far.get(frozenset((Tier.DEVICE, tier)))
        return access if access.offline or far is None else chain(access, far)

    async def set_links(self, links: Mapping[tuple[Tier, Tier], LinkProfile]) -> None:
        """Links between tiers are now these profiles (an operator's or the OS's word): planned on at
        once, with one re-plan for them all, none when nothing changed."""
        changed = [self._set_link(a, b, profile) for (a, b), profile in links.items()]
        if any(changed):
            await self.replan()

    def _set_link(self, a: Tier, b: Tier, profile: LinkProfile) -> bool:
        """Plan on ``profile`` between ``a`` and ``b``; False when that is what is planned already (the
        RTT measured on it stays)."""
        pair = frozenset((a, b))
        if self.link_profiles.get(pair) == profile:
            return False
        self.link_profiles[pair] = profile
        self.link_rtt.pop(pair, None)  # measured on the old link
        return True

    def link_state(self, a: Tier, b: Tier) -> LinkState | None:
        """The planning estimate of the link between ``a`` and ``b`` now (None: unknown or offline)."""
        return self._links().get(frozenset((a, b)))

    @property
    def network_up(self) -> bool:
        """Whether the device can reach any other tier now (its access link is not offline)."""
        profiles = [self.link_profiles.get(frozenset((Tier.DEVICE, t))) for t in (Tier.EDGE, Tier.CLOUD)]
        reachable = any(p is None or not p.offline for p in profiles)
        return reachable and any(r.available for t, r in self.tiers.items() if t is not Tier.DEVICE)

    def placements(self) -> list[SpanPlan]:
        """Every placement that can run now, fastest per token first (the fixed spans only, if set)."""
        if self.fixed is not None:
            try:
                return [self.predict(self.fixed)]
            except PlanError:
                return []
        try:
            return plan_spans(self.shape, self._capacities(), self._links())[1]
        except PlanError:
            return []

    def prefill_s(self, spans: Mapping[Tier, Span], tokens: int) -> float:
        """Predicted seconds to feed ``tokens`` tokens through ``spans`` at once (0 for none)."""
        if tokens <= 0:
            return 0.0
        plan = score(
            self.shape,
            self._capacities(),
            self._links(),
            {t: (s.first, s.last) for t, s in spans.items()},
            tokens=tokens,
        )
        return plan.token_s

    def holders_available(self, spans: Mapping[Tier, Span]) -> bool:
        return all(self.tiers[t].available for t in spans)

    async def replan(self) -> SpanPlan | None:
        """Choose the layers each tier holds now (fixed spans stay while their tiers are up)."""
        async with self._plan_lock:
            caps = self._capacities()
            if self.fixed is not None and all(caps.get(t) for t in self.fixed):
                self.spans = dict(self.fixed)
                try:
                    self.plan = self.predict(self.fixed)
                except PlanError:
                    self.plan = None  # the user's spans run even where the model predicts trouble
                return self.plan
            try:
                best, self.alternatives = plan_spans(self.shape, caps, self._links())
            except PlanError:  # nothing can hold the layers now (tiers down, offline, no room): say so
                self.plan, self.alternatives, self.spans = None, [], {}
                return None
            self.plan = best
            self.spans = {t: Span(a, b) for t, (a, b) in best.spans.items()}
            return best

    async def _revive(self) -> None:
        """Probe tiers that are down (at most every PROBE_EVERY_S); re-plan when one came back."""
        now = self.clock()
        came_back = False
        for tier, record in self.tiers.items():
            if not record.available and now - record.last_probe >= PROBE_EVERY_S:
                came_back |= await self.probe(tier)
        if came_back:
            await self.replan()

    async def mark_down(self, tier: Tier) -> None:
        self.tiers[tier].available = False
        self.tiers[tier].last_probe = self.clock()
        await self.replan()

    # --- steps ----------------------------------------------------------------------------------------

    def _route(self, spans: Spans) -> tuple[str, list[RouteHop]]:
        holders = [RouteHop(t.value, s) for t, s in spans.items()]
        if holders and holders[0].peer == Tier.DEVICE.value:
            return str(holders[0].span), holders[1:]
        return "", holders

    async def _call(self, tier: Tier, request: StageRequest) -> StageResponse:
        if self.hop.peers is None:
            raise TierUnavailableError(f"the entry point has no route to tier {tier.value}", tier=tier.value)
        return await self.hop.peers.call(tier.value, request)

    async def step(
        self,
        context: str,
        spans: Spans,
        past_len: int,
        ids: Sequence[int],
        *,
        sample: SamplingConfig | None,
        recent: Sequence[int],
        stats: StepStats,
    ) -> int | None:
        """One pass of ``ids`` through the holders; the sampled token when ``sample`` is given."""
        span, route = self._route(spans)
        meta: dict[str, MetaValue] = {
            "context": context,
            "past_len": past_len,
            "span": span,
            "route": encode_hops(route),
        }
        if sample is not None:
            meta["sample"] = encode_sampling(sample)
            if needs_recent(sample):
                meta["recent"] = json.dumps(list(recent[-sample.repeat_last_n :]))
        request = StageRequest(
            OP_LM_STEP, inputs={IDS: np.asarray([list(ids)], np.int64)}, meta=meta, quant=self.quant
        )
        started = time.perf_counter()
        reply = await self.hop.step(request)
        path = [Tier.DEVICE.value, *(h.peer for h in route)]
        stats.add(reply.meta, path, time.perf_counter() - started)
        return int(reply.meta["token"]) if "token" in reply.meta else None

    async def prefill(
        self,
        context: str,
        spans: Spans,
        tokens: Sequence[int],
        start: int,
        *,
        sample: SamplingConfig,
        stats: StepStats,
    ) -> int:
        """Feed ``tokens[start:]`` (the tiers hold KV for ``tokens[:start]``); the next token."""
        token: int | None = None
        at = start
        while at < len(tokens):
            chunk = tokens[at : at + PREFILL_CHUNK]
            last = at + len(chunk) >= len(tokens)
            token = await self.step(
                context,
                spans,
                at,
                chunk,
                sample=sample if last else None,
                recent=tokens[: at + len(chunk)],
                stats=stats,
            )
            at += len(chunk)
        assert token is not None  # tokens[start:] is never empty
        return token

    async def drop(self, context: str, tiers: Sequence[Tier] | None = None) -> int:
        """Erase the context's KV on every tier (best effort on tiers that are down); bytes erased."""
        erased = self.hop.kv.drop(context)
        for tier in tiers or [t for t in self.tiers if t is not Tier.DEVICE]:
            if tier is Tier.DEVICE or tier.value not in (self.hop.peers.addresses if self.hop.peers else {}):
                continue
            try:
                reply = await self._call(tier, StageRequest(OP_LM_DROP, meta={"context": context}))
            except TierUnavailableError:
                continue  # a tier that is down lost its memory with its process
            erased += sum(int(v) for k, v in reply.meta.items() if str(k).startswith("erased."))
        return erased

    async def shards(self, context: str) -> dict[str, dict[str, object]]:
        """Which tier holds which part of a context's KV now: ``{tier: {layers, tokens, bytes}}``."""
        out: dict[str, dict[str, object]] = {}
        mine = self.hop.holding(context)
        if mine:
            out[Tier.DEVICE.value] = dict(mine)
        for tier, record in self.tiers.items():
            if tier is Tier.DEVICE or not record.available:
                continue
            try:
                reply = await self._call(tier, StageRequest(OP_LM_INFO, meta={"context": context}))
            except TierUnavailableError:
                continue
            if reply.meta:
                out[tier.value] = dict(reply.meta)
        return out

    # --- a whole generation -------------------------------------------------------------------------------

    def check_length(self, tokens: int) -> None:
        if self.max_seq_len is not None and tokens >= self.max_seq_len:
            raise InvalidInputError(
                f"the conversation is {tokens} tokens; this model's context is {self.max_seq_len} tokens"
            )

    async def generate(
        self,
        context: str,
        tokens: list[int],
        kv_len: int,
        spans: Spans | None,
        config: SamplingConfig,
        *,
        prompt_tokens: int,
        placement: Spans | None = None,
    ) -> AsyncIterator[GenerationEvent | GenerationOutcome]:
        """Generate after ``tokens`` (the tiers hold KV for ``tokens[:kv_len]`` under ``spans``).

        ``placement``: the spans the router chose for this request (default: the context's own
        while its tiers are up, else the plan in force). A context that moves to another placement
        has its KV rebuilt there and dropped where it was.

        Yields a :class:`GenerationEvent` per token (and per thing that happened), then one
        :class:`GenerationOutcome`.
        """
        self.check_length(len(tokens))
        await self._revive()
        if not self.spans and placement is None:
            raise TierUnavailableError("no tier can hold the model's layers now")
        events: list[dict[str, str]] = []
        stats = StepStats()
        if placement is not None and spans is not None and dict(spans) != dict(placement):
            events.append({"event": "rerouted", "spans": json.dumps(spans_text(placement))})
            await self.drop(context, [t for t, s in spans.items() if placement.get(t) != s])
            spans, kv_len = dict(placement), 0
        elif placement is not None and spans is None:
            spans, kv_len = dict(placement), 0
        usable = spans is not None and all(self.tiers[t].available for t in spans)
        if not usable:  # a new context, or one whose tiers are gone: the plan in force, KV rebuilt
            if spans:
                events.append({"event": "replanned", "spans": json.dumps(spans_text(self.spans))})
            spans, kv_len = dict(self.spans), 0
        assert spans is not None
        start = min(kv_len, len(tokens) - 1)  # at least one token goes in, to get the next one's logits
        cached = start
        budget = config.max_new_tokens
        if self.max_seq_len is not None:
            budget = min(budget, self.max_seq_len - len(tokens))
        generated: list[int] = []
        begun = time.perf_counter()
        first_at: float | None = None
        sequence = list(tokens)
        text = TextStream(self.tokenizer)
        while len(generated) < budget:
            try:
                if not generated or start < len(sequence) - 1:
                    token = await self.prefill(context, spans, sequence, start, sample=config, stats=stats)
                else:
                    stepped = await self.step(
                        context,
                        spans,
                        len(sequence) - 1,
                        sequence[-1:],
                        sample=config,
                        recent=sequence,
                        stats=stats,
                    )
                    assert stepped is not None  # a step that samples returns its token
                    token = stepped
            except KVMissingError as exc:
                events.append({"event": "kv_rebuilt", "tier": str(exc.tier), "tokens": str(len(sequence))})
                yield GenerationEvent(event=events[-1])
                start = 0
                if sum(e["event"] == "kv_rebuilt" for e in events) > 2:
                    raise
                continue
            except TierUnavailableError as exc:
                lost = next((t for t in Tier if t.value == exc.tier), None)
                if lost is None or lost is Tier.DEVICE:
                    raise
                await self.mark_down(lost)
                if not self.spans:
                    raise TierUnavailableError(
                        f"tier {lost.value} is gone and no tier left can hold its layers "
                        f"({exc}); the context is kept",
                        tier=lost.value,
                    ) from exc
                spans, start = dict(self.spans), 0
                events.append(
                    {
                        "event": "failover",
                        "lost": lost.value,
                        "spans": json.dumps(spans_text(spans)),
                        "rebuilt_tokens": str(len(sequence)),
                    }
                )
                yield GenerationEvent(event=events[-1])
                continue
            start = len(sequence)  # everything before the new token is in the tiers' KV now
            if first_at is None:
                first_at = time.perf_counter()
            generated.append(token)
            sequence.append(token)
            yield GenerationEvent(token=token, text=text.add(generated))
            if token == self.eos:
                break
        end = time.perf_counter()
        first_at = first_at or end
        self.learn_hops(stats)
        yield GenerationOutcome(
            tokens=sequence,
            kv_len=len(sequence) - 1 if generated else start,
            generated=generated,
            spans=spans,
            stats=stats,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached,
            ttft_s=first_at - begun,
            decode_s=end - first_at,
            events=events,
        )

    # --- migration ---

    async def migrate(
        self, context: str, spans: Spans, layers: Span, to: Tier
    ) -> tuple[Spans, dict[str, object]]:
        """Move the KV of ``layers`` of a context to tier ``to``; the new spans (checked contiguous)."""
        source = next(
            (t for t, s in spans.items() if s.first <= layers.first and layers.last <= s.last), None
        )
        if source is None:
            raise InvalidInputError(
                f"no tier holds all of layers {layers} for this context (spans: {spans_text(spans)})"
            )
        if source is to:
            raise InvalidInputError(f"layers {layers} are on {to.value} already")
        new = _moved(spans, source, layers, to, self.num_layers)
        move_meta: dict[str, MetaValue] = {"context": context, "layers": str(layers)}
        near, far = sorted((source, to), key=ORDER.index)
        started = time.perf_counter()
        # the nearer tier has a connection to the farther one: it pushes (towards the cloud) or pulls
        request = StageRequest(
            OP_LM_KV_MOVE,
            meta={**move_meta, **({"to": far.value} if near is source else {"from": far.value})},
            quant=self.quant,
        )
        if near is Tier.DEVICE:
            reply = await self.hop.move(request)
        else:
            reply = await self._call(near, request)
        seconds = time.perf_counter() - started
        moved: dict[str, object] = {
            "layers": str(layers),
            "from": source.value,
            "to": to.value,
            "bytes": int(reply.meta.get("moved_bytes", 0)),
            "seconds": seconds,
        }
        return new, moved


def _moved(spans: Spans, source: Tier, layers: Span, to: Tier, num_layers: int) -> Spans:
    held = {t: set(s.layers) for t, s in spans.items()}
    held[source] -= set(layers.layers)
    held.setdefault(to, set()).update(layers.layers)
    out: Spans = {}
    for tier in ORDER:
        mine = sorted(held.get(tier, ()))
        if not mine:
            continue
        if mine != list(range(mine[0], mine[-1] + 1)):
            raise InvalidInputError(f"moving layers {layers} to {to.value} would split {tier.value}'s layers")
        out[tier] = Span(mine[0], mine[-1])
    check_cover(list(out.values()), num_layers)
    return out
