"""The cost model: what a plan costs in latency and device energy, and its score.

A plan runs one request along a *path* of tiers that starts at the device, e.g.
``device -> edge -> cloud``; every unit gets a *label*, the index of its tier on
the path, and data only flows forward (a unit's label is at least its inputs').
For one request (no pipelining):

    latency = sum of each unit's compute time on its tier (x the tier's load factor)
            + for each hop j of the path: RTT_j + overhead_j          (the hop is used once each way)
            + for each tensor, each hop it crosses forward: wire_bytes / up_bandwidth_j
            + for each graph output computed past the device, each hop back: wire_bytes / down_bandwidth_j

A tensor crosses hops (label of its producer, max label of its readers]: sent once
per hop however many units read it, relayed tier by tier. Graph inputs start on
the device; results return to it. ``wire_bytes`` is the size of the secure frame
(docs/WIRE.md): int8 sends 1 byte per element plus one float32 scale, fp16 2 bytes,
raw the tensor's own bytes (non-float tensors always travel raw), each plus the
frame's header and tag. Resident tensors (an LM's KV cache) are never sent.

Device energy follows :mod:`tierflow.planner.power`, and

    score = latency + w * device_energy,   w = energy_weight x battery factor

Everything here is a pure function of a :class:`~tierflow.planner.graph.UnitGraph`
and a :class:`~tierflow.planner.snapshot.Snapshot`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from tierflow.errors import PlanError
from tierflow.planner.graph import TensorInfo, UnitGraph
from tierflow.planner.power import effective_energy_weight
from tierflow.planner.snapshot import Snapshot
from tierflow.types.links import Direction
from tierflow.types.quant import QuantMode

INF = math.inf
FRAME_FIXED_BYTES = 36  # frame header before the shape (tierflow.wire.frame)
FRAME_TAG_BYTES = 16  # AES-GCM tag
SCALE_BYTES = 4  # one float32 scale per tensor in int8 mode


def wire_bytes(tensor: TensorInfo, compression: QuantMode) -> int:
    """Bytes one secure frame carrying ``tensor`` puts on the link."""
    header = FRAME_FIXED_BYTES + 4 * len(tensor.shape) + FRAME_TAG_BYTES
    n = tensor.elements
    if not tensor.is_float or compression == QuantMode.RAW:
        payload = tensor.nbytes
    elif compression == QuantMode.FP16:
        payload = min(2 * n, tensor.nbytes)
    elif compression == QuantMode.INT8_CHANNEL:  # a scale per slice of the last axis
        payload = n + SCALE_BYTES * (tensor.shape[-1] if tensor.shape else 1)
    else:
        payload = n + SCALE_BYTES
    return header + payload


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HopTraffic(_Frozen):
    """What crosses one hop in one direction."""

    src: str
    dst: str
    direction: Direction  # up (towards the cloud) or down (results back to the device)
    tensors: tuple[str, ...]
    raw_bytes: int
    wire_bytes: int
    seconds: float  # wire_bytes / bandwidth (the hop's RTT is counted once in link_s)


class Prediction(_Frozen):
    """What the cost model predicts for one plan."""

    latency_s: float
    compute_s: dict[str, float]  # per tier on the path
    transfer_s: float  # bytes / bandwidth, all hops both ways
    link_s: float  # RTT + fixed overhead of every hop on the path
    device_energy_j: float
    score: float
    traffic: tuple[HopTraffic, ...]
    violations: tuple[str, ...] = ()  # why the plan cannot run now (empty: it can)

    @property
    def feasible(self) -> bool:
        return not self.violations


class PathCosts:
    """The cost tables of one path: per-unit-per-label and per-tensor-per-hop terms of the score.

    Raises :class:`PlanError` when the path cannot be used at all (a hop without a
    usable link, or a tier without a profile for some unit).
    """

    def __init__(
        self,
        graph: UnitGraph,
        snapshot: Snapshot,
        path: Sequence[str],
        compute_tiers: frozenset[str] | None = None,
    ) -> None:
        self.graph = graph
        self.snapshot = snapshot
        self.path = tuple(path)
        if not self.path or self.path[0] != snapshot.tiers[0].name:
            raise PlanError("a path must start at the device")
        self.m = len(self.path) - 1
        self.tiers = [snapshot.tier(name) for name in self.path]
        self.up_s_per_byte = [0.0]
        self.down_s_per_byte = [0.0]
        self.hop_s = [0.0]
        for j in range(1, self.m + 1):
            a, b = self.path[j - 1], self.path[j]
            link = snapshot.link(a, b)
            if link is None or not link.usable:
                raise PlanError(f"no usable link between {a} and {b}")
            forward_bps, back_bps = link.up_bps, link.down_bps
            if link.a != a:
                forward_bps, back_bps = back_bps, forward_bps
            self.up_s_per_byte.append(8.0 / forward_bps)
            self.down_s_per_byte.append(8.0 / back_bps)
            self.hop_s.append(link.rtt_s + link.overhead_s)
        self.wire = {name: wire_bytes(t, snapshot.compression) for name, t in graph.tensors.items()}
        self.unit_names = [u.name for u in graph.units]
        self.index = graph.index
        # effective compute seconds per unit and label; INF where the unit may not run
        private = set(graph.inputs) if snapshot.privacy else set()
        self.compute: list[list[float]] = []
        self.why_not: dict[tuple[int, int], str] = {}
        for i, unit in enumerate(graph.units):
            row: list[float] = []
            for label, tier in enumerate(self.tiers):
                if unit.name not in tier.unit_s:
                    raise PlanError(f"tier {tier.name} has no profile for unit '{unit.name}'")
                seconds = tier.unit_s[unit.name] * tier.load_factor()
                reason = ""
                if not tier.available:
                    reason = f"{tier.name} is unavailable"
                elif compute_tiers is not None and tier.name not in compute_tiers:
                    reason = f"{tier.name} may not compute"
                elif label > 0 and private.intersection(unit.inputs):
                    reason = f"privacy keeps unit '{unit.name}' (it reads the raw input) on the device"
                elif tier.memory_bytes is not None and (need := unit_memory(graph, [unit.name])) > (
                    cap := tier.memory_bytes
                ):
                    reason = f"unit '{unit.name}' needs {mib(need)} but {tier.name} has {mib(cap)}"
                if reason:
                    self.why_not[(i, label)] = reason
                    seconds = INF
                row.append(seconds)
            self.compute.append(row)
        power = snapshot.power
        self.w = effective_energy_weight(snapshot.energy_weight, snapshot.battery)
        self.k = 1.0 + self.w * power.idle_w  # every second of latency also costs idle energy
        self.const = self.k * sum(self.hop_s)

    # --- terms of the score, for the search ------------------------------------------

    def unary(self, i: int, label: int) -> float:
        """Score of unit ``i`` at ``label``: its compute, and returning its graph outputs to the device."""
        c = self.compute[i][label]
        if c == INF:
            return INF
        p = self.snapshot.power
        cost = self.k * c + (self.w * (p.busy_w - p.idle_w) * c if label == 0 else 0.0)
        for name in self.graph.units[i].outputs:
            t = self.graph.tensors[name]
            if t.output and not t.resident and label > 0:
                cost += self.return_cost(name, label)
        return cost

    def return_cost(self, name: str, label: int) -> float:
        b = self.wire[name]
        radio = self.snapshot.power.radio
        seconds = sum(b * self.down_s_per_byte[j] for j in range(1, label + 1))
        first = b * self.down_s_per_byte[1]
        return self.k * seconds + self.w * (radio.rx_w * first + radio.rx_j_per_byte * b)

    def forward(self, name: str, hop: int) -> float:
        """Score of sending tensor ``name`` across hop ``hop`` (1-based) towards the cloud."""
        t = self.graph.tensors[name]
        if t.resident:
            return 0.0
        b = self.wire[name]
        cost = self.k * b * self.up_s_per_byte[hop]
        if hop == 1:
            radio = self.snapshot.power.radio
            cost += self.w * (radio.tx_w * b * self.up_s_per_byte[1] + radio.tx_j_per_byte * b)
        return cost

    def score_of(self, labels: Sequence[int]) -> float:
        """The score from the terms above (what the search minimises); INF if not allowed."""
        total = self.const
        for i, label in enumerate(labels):
            total += self.unary(i, label)
        for name, t in self.graph.tensors.items():
            src = 0 if t.producer is None else labels[self.index[t.producer]]
            dst = max((labels[self.index[c]] for c in t.consumers), default=src)
            if dst < src:
                return INF
            for hop in range(src + 1, dst + 1):
                total += self.forward(name, hop)
        return total

    # --- the prediction, computed directly from the definition ------------------------

    def evaluate(self, labels: Sequence[int]) -> Prediction:
        """Latency, energy and score of ``labels`` (one label per unit, in unit order)."""
        g, snap = self.graph, self.snapshot
        if len(labels) != len(g.units):
            raise PlanError(f"a plan needs one label per unit ({len(g.units)}), got {len(labels)}")
        if any(not 0 <= x <= self.m for x in labels):
            raise PlanError(f"labels must be in 0..{self.m} for path {' -> '.join(self.path)}")
        violations: list[str] = []
        compute = dict.fromkeys(self.path, 0.0)
        for i, label in enumerate(labels):
            tier = self.tiers[label]
            seconds = tier.unit_s[g.units[i].name] * tier.load_factor()
            compute[tier.name] += seconds
            if self.compute[i][label] == INF:
                violations.append(self.why_not[(i, label)])
        fwd: list[list[str]] = [[] for _ in range(self.m + 1)]
        back: list[list[str]] = [[] for _ in range(self.m + 1)]
        for name, t in g.tensors.items():
            src = 0 if t.producer is None else labels[self.index[t.producer]]
            readers = [labels[self.index[c]] for c in t.consumers]
            if any(r < src for r in readers):
                raise PlanError(f"tensor '{name}' would flow backwards (from {self.path[src]} to a "
                                f"reader on {self.path[min(readers)]})")
            if t.resident:
                continue
            for hop in range(src + 1, max(readers, default=src) + 1):
                fwd[hop].append(name)
            if t.output and t.producer is not None:
                for hop in range(1, src + 1):
                    back[hop].append(name)
        traffic: list[HopTraffic] = []
        transfer = 0.0
        sent = [(0, 0.0)] * (self.m + 1)
        received = [(0, 0.0)] * (self.m + 1)
        for hop in range(1, self.m + 1):
            for direction, names, per_byte in ((Direction.UP, fwd[hop], self.up_s_per_byte[hop]),
                                               (Direction.DOWN, back[hop], self.down_s_per_byte[hop])):
                wire = sum(self.wire[n] for n in names)
                seconds = wire * per_byte
                transfer += seconds
                if direction is Direction.UP:
                    sent[hop] = (wire, seconds)
                    src_t, dst_t = self.path[hop - 1], self.path[hop]
                else:
                    received[hop] = (wire, seconds)
                    src_t, dst_t = self.path[hop], self.path[hop - 1]
                if names:
                    traffic.append(HopTraffic(
                        src=src_t, dst=dst_t, direction=direction, tensors=tuple(names),
                        raw_bytes=sum(g.tensors[n].nbytes for n in names), wire_bytes=wire, seconds=seconds,
                    ))
        link = sum(self.hop_s)
        latency = sum(compute.values()) + transfer + link
        violations += memory_violations(g, snap, self.path, labels)
        p = snap.power
        device_compute = compute[self.path[0]]
        (b_tx, t_tx), (b_rx, t_rx) = (sent[1], received[1]) if self.m else ((0, 0.0), (0, 0.0))
        energy = p.energy_j(latency, device_compute, sent_bytes=b_tx, send_s=t_tx,
                            received_bytes=b_rx, receive_s=t_rx)
        return Prediction(
            latency_s=latency,
            compute_s=compute,
            transfer_s=transfer,
            link_s=link,
            device_energy_j=energy,
            score=latency + self.w * energy,
            traffic=tuple(traffic),
            violations=tuple(dict.fromkeys(violations)),
        )


def unit_memory(graph: UnitGraph, units: Sequence[str]) -> int:
    """Memory a stage of ``units`` needs: its distinct weights + the largest unit's boundary tensors."""
    weights: set[str] = set()
    activation = 0
    for name in units:
        u = graph.unit(name)
        weights.update(u.weights)
        activation = max(activation, u.activation_bytes)
    return sum(graph.weight_sizes[w] for w in weights) + activation


def memory_violations(
    graph: UnitGraph, snapshot: Snapshot, path: Sequence[str], labels: Sequence[int]
) -> list[str]:
    out: list[str] = []
    for label, name in enumerate(path):
        tier = snapshot.tier(name)
        units = [graph.units[i].name for i, x in enumerate(labels) if x == label]
        if tier.memory_bytes is None or not units:
            continue
        need = unit_memory(graph, units)
        if need > tier.memory_bytes:
            out.append(f"the {name} stage needs {mib(need)} but {name} has {mib(tier.memory_bytes)}")
    return out


def mib(n: float) -> str:
    """``12.5 MiB`` (or ``10.2 KiB`` below a MiB)."""
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"
