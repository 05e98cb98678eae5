"""Where each layer of a language model runs: contiguous layer spans over device < edge < cloud.

A decoder LM is a chain of ``N`` near-identical layers, so the split of the general planner
(:mod:`tierflow.planner.search`) reduces here to two cut points ``0 <= a <= b <= N``: the device
holds layers ``[0, a)``, the edge ``[a, b)``, the cloud ``[b, N)``; a tier may hold none. What a
generated token costs on a plan, in the steady state of decoding:

* compute: each holder's per-layer decode seconds times its layer count, scaled by its load;
* links: for every hop between consecutive holders (the device is always the first: it is the
  entry point, even when it holds no layer), the RTT, the hidden state one way and the sampled
  token the other (``transfer_s``), and the hop's fixed overhead.

A span fits a tier when its weights plus the KV cache of one full-length context fit the
tier's memory budget; a plan with a span that does not fit is never chosen. Every plan is
scored exhaustively (``O(N^2)``), so the choice is exact under the model, and the alternatives
are kept so a caller can say why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tierflow.errors import PlanError
from tierflow.planner.snapshot import LinkState
from tierflow.types.links import transfer_s
from tierflow.types.tiers import Tier

TOKEN_BYTES = 8  # the sampled token id coming back


@dataclass(frozen=True)
class TierCapacity:
    """What the span planner knows of one tier."""

    tier: Tier
    layer_s: float  # measured decode seconds per layer per token on this tier
    memory_bytes: float | None = None  # budget for weights + KV; None = ample
    available: bool = True
    load: float = 0.0  # others' share of the tier's compute now (see DeviceMonitor)

    def compute_s(self, layers: int) -> float:
        return self.layer_s * layers / (1.0 - min(self.load, 0.9))


@dataclass(frozen=True)
class LMShape:
    """The model as the span planner sees it (from its ONNX graph)."""

    num_layers: int
    layer_weight_bytes: tuple[int, ...]  # one per layer
    embedding_bytes: int  # weights only the first span reads (token embedding)
    head_bytes: int  # weights only the last span reads (final norm, LM head)
    kv_bytes_per_token: int  # per layer: key + value of one token
    hidden_bytes_per_token: int  # the hidden state crossing a cut, per token
    max_seq_len: int

    def span_bytes(self, first: int, stop: int) -> int:
        """Weights of layers ``[first, stop)`` plus one full context's KV for them."""
        weights = sum(self.layer_weight_bytes[first:stop])
        if first == 0:
            weights += self.embedding_bytes
        if stop == self.num_layers:
            weights += self.head_bytes
        return weights + (stop - first) * self.kv_bytes_per_token * self.max_seq_len


@dataclass(frozen=True)
class SpanPlan:
    """A placement of every layer: ``spans[tier] = (first, last)`` inclusive, holders in tier order."""

    spans: dict[Tier, tuple[int, int]]
    token_s: float  # predicted seconds per generated token
    compute_s: dict[Tier, float] = field(default_factory=dict)
    link_s: float = 0.0

    @property
    def holders(self) -> tuple[Tier, ...]:
        return tuple(self.spans)

    def describe(self) -> str:
        parts = [f"{t.value} {a}-{b}" for t, (a, b) in self.spans.items()]
        return f"{', '.join(parts)}: {self.token_s * 1000:.2f} ms/token"


ORDER = (Tier.DEVICE, Tier.EDGE, Tier.CLOUD)


def _hop(link: LinkState | None, shape: LMShape, tokens: int) -> float:
    if link is None or not link.usable:
        return math.inf
    return (link.rtt_s + link.overhead_s + transfer_s(shape.hidden_bytes_per_token * tokens, link.up_bps)
            + transfer_s(TOKEN_BYTES, link.down_bps))


def score(
    shape: LMShape, tiers: Mapping[Tier, TierCapacity], links: Mapping[frozenset[Tier], LinkState],
    spans: Mapping[Tier, tuple[int, int]], *, tokens: int = 1,
) -> SpanPlan:
    """The predicted cost of ``spans`` (raises PlanError naming why it cannot run)."""
    compute: dict[Tier, float] = {}
    for tier, (first, last) in spans.items():
        cap = tiers.get(tier)
        if cap is None or not cap.available:
            raise PlanError(f"tier {tier.value} is not available")
        needed = shape.span_bytes(first, last + 1)
        if cap.memory_bytes is not None and needed > cap.memory_bytes:
            raise PlanError(f"layers {first}-{last} need {needed / 2**20:.1f} MiB on {tier.value}; "
                            f"its budget is {cap.memory_bytes / 2**20:.1f} MiB")
        compute[tier] = cap.compute_s(last - first + 1) * tokens
    path = [Tier.DEVICE, *(t for t in spans if t is not Tier.DEVICE)]
    link = sum(_hop(links.get(frozenset(hop)), shape, tokens) for hop in zip(path, path[1:], strict=False))
    if math.isinf(link):
        raise PlanError("a hop of this placement has no usable link")
    return SpanPlan(dict(spans), sum(compute.values()) + link, compute, link)


def candidates(num_layers: int, tiers: Sequence[Tier] = ORDER) -> list[dict[Tier, tuple[int, int]]]:
    """Every placement of contiguous spans over ``tiers`` in order (a tier may hold none)."""
    out: list[dict[Tier, tuple[int, int]]] = []
    device, edge, cloud = tiers
    for a in range(num_layers + 1):
        for b in range(a, num_layers + 1):
            spans: dict[Tier, tuple[int, int]] = {}
            for tier, (first, stop) in ((device, (0, a)), (edge, (a, b)), (cloud, (b, num_layers))):
                if stop > first:
                    spans[tier] = (first, stop - 1)
            out.append(spans)
    return out


def plan_spans(
    shape: LMShape, tiers: Mapping[Tier, TierCapacity], links: Mapping[frozenset[Tier], LinkState],
    *, tokens: int = 1,
) -> tuple[SpanPlan, list[SpanPlan]]:
    """The placement with the lowest predicted seconds per token, and every feasible one (best first)."""
    feasible: list[SpanPlan] = []
    reasons: list[str] = []
    for spans in candidates(shape.num_layers):
        try:
            feasible.append(score(shape, tiers, links, spans, tokens=tokens))
        except PlanError as exc:
            reasons.append(str(exc))
    if not feasible:
        why = sorted(set(reasons), key=reasons.index)[:3]
        raise PlanError(f"no placement of the {shape.num_layers} layers can run: {'; '.join(why)}")
    feasible.sort(key=lambda p: p.token_s)
    return feasible[0], feasible
