"""What measured network time says about the links: per-hop overhead and first-hop samples.

A request's network time is its total less every tier's compute. The link model explains
part of it (RTT + bytes / bandwidth per hop, at the estimators' figures); these pure
functions attribute the rest: to a fixed cost per use of each link
(:func:`measured_overhead`), or to the hop the request entered by
(:func:`first_hop_sample`), which feeds that link's bandwidth estimate.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tierflow.errors import InvalidInputError
from tierflow.planner.estimate import LinkEstimator
from tierflow.planner.executable import actual_path
from tierflow.planner.plan import Plan
from tierflow.planner.snapshot import LinkState
from tierflow.types.links import Direction, transfer_s


def _hop_bytes(plan: Plan) -> tuple[list[int], list[int]]:
    """Wire bytes per hop of ``plan.path``: ``up[j]`` into tier j, ``down[j]`` out of tier j."""
    path = plan.path
    up = [0] * len(path)
    down = [0] * len(path)
    for hop in plan.prediction.traffic:
        if hop.direction == Direction.UP:
            up[path.index(hop.dst)] += hop.wire_bytes
        else:
            down[path.index(hop.src)] += hop.wire_bytes
    return up, down


def _hop_s(state: LinkState, up_bytes: int, down_bytes: int) -> float:
    """What the link model predicts for one hop: RTT, overhead and both directions' transfers."""
    return (state.rtt_s + state.overhead_s + transfer_s(up_bytes, state.up_bps)
            + transfer_s(down_bytes, state.down_bps))


@dataclass(frozen=True)
class TransferSample:
    """``nbytes`` crossed the first hop ``direction`` in ``seconds`` (``LinkEstimator.observe_transfer``)."""

    nbytes: int
    seconds: float
    direction: Direction


def first_hop_sample(plan: Plan, network_s: float, states: Sequence[LinkState]) -> TransferSample | None:
    """The transfer sample a request gives the hop it entered by, or None when it gives none.

    ``network_s`` covers every hop of the path both ways. What the current estimates
    (``states``: one per hop of ``plan.path``, in order) predict for the later hops and for
    the first hop's lighter direction is taken out; what is left, less the hop's fixed
    overhead, is one transfer of the first hop in the direction that carried more bytes.
    A plan that stays on the device, or that skips a relay (its predicted traffic is not
    what crossed), gives no sample.
    """
    path = actual_path(plan)
    if len(path) < 2 or path != plan.path or len(states) != len(path) - 1:
        return None
    up, down = _hop_bytes(plan)
    rest = sum(_hop_s(state, up[j], down[j]) for j, state in enumerate(states[1:], start=2))
    first = states[0]
    seconds = network_s - rest - first.overhead_s
    if up[1] >= down[1]:
        sample = TransferSample(up[1], seconds - transfer_s(down[1], first.down_bps), Direction.UP)
    else:
        sample = TransferSample(down[1], seconds - transfer_s(up[1], first.up_bps), Direction.DOWN)
    return sample if sample.seconds > 0 else None


def measured_overhead(
    samples: Sequence[tuple[Plan, float]], links: Sequence[LinkEstimator]
) -> dict[frozenset[str], float]:
    """The fixed cost per use of each link that the link model (RTT + bytes / bandwidth) does not explain.

    ``samples`` are (plan, measured network seconds) of requests. For each: its network time
    less the RTTs and transfer times of the links it used (at the estimators' figures).
    Requests over one link give that link's figure (the median); a request over several
    links gives what is left, after the links already known, to the ones not yet known. It
    covers what the data plane adds per hop (serialising, quantising and sealing frames,
    the RPC, and a relay's own decode / re-encode). A link without any sample gets the
    median of the others.
    """
    by_pair = {frozenset((e.a, e.b)): e.state() for e in links}
    excess: list[tuple[list[frozenset[str]], float]] = []
    for plan, network_s in samples:
        path = actual_path(plan)
        if len(path) < 2 or path != plan.path:
            continue
        up, down = _hop_bytes(plan)
        hops = [frozenset(h) for h in zip(path, path[1:], strict=False)]
        explained = sum(
            _hop_s(by_pair[hop].model_copy(update={"overhead_s": 0.0}), up[j], down[j])
            for j, hop in enumerate(hops, start=1)
        )
        excess.append((hops, network_s - explained))
    if not excess:
        raise InvalidInputError("measuring the per-hop overhead needs requests that crossed a link")
    known: dict[frozenset[str], float] = {}
    for size in sorted({len(h) for h, _ in excess}):
        found: dict[frozenset[str], list[float]] = {}
        for hops, seconds in excess:
            if len(hops) != size:
                continue
            unknown = [h for h in hops if h not in known]
            left = seconds - sum(known[h] for h in hops if h in known)
            for h in unknown:
                found.setdefault(h, []).append(left / len(unknown))
        known.update({h: max(statistics.median(v), 0.0) for h, v in found.items()})
    fallback = statistics.median(known.values())
    return {pair: known.get(pair, fallback) for pair in by_pair}


def set_overhead(links: Sequence[LinkEstimator], overhead: Mapping[frozenset[str], float]) -> None:
    """Give each link estimator its measured fixed overhead (see :func:`measured_overhead`)."""
    for estimator in links:
        estimator.overhead_s = overhead.get(frozenset((estimator.a, estimator.b)), estimator.overhead_s)
