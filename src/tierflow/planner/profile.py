"""Profiles: how long each unit of a model takes on a tier, as plain values.

A :class:`TierProfile` is each unit's seconds on one tier, worked out from the stage
timings the tier measured (:class:`StageTiming`) and each unit's share of the kernel time
(:func:`calibrate`): a tier that is three times slower -- for any reason, simulated or
real -- is measured three times slower; nothing reads a setting. The measuring itself
(ONNX Runtime's profiler, timed stage runs, the cache on disk) is
:mod:`tierflow.profiling.profiler`.
"""


from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tierflow.errors import ConfigError, InvalidInputError
from tierflow.planner.graph import UnitGraph
from tierflow.planner.snapshot import TierState

SHARE_FLOOR = 1e-9  # seconds: a unit the profiler saw no kernel of still takes some time


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StageTiming(_Frozen):
    """A stage a tier ran and how long it took (mean wall seconds per run)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    seconds: float = Field(gt=0.0)


class TierProfile(_Frozen):
    """Per-unit compute time of one model on one tier."""

    model_sha256: str
    tier: str
    fingerprint: str
    granularity: str
    input_shapes: dict[str, tuple[int, ...]]
    unit_s: dict[str, float]
    stages: tuple[StageTiming, ...]  # what was measured
    load: float = Field(default=0.0, ge=0.0, le=1.0)  # others' CPU share while measuring
    source: Literal["local", "remote", "scaled"] = "local"
    created_unix: float = 0.0

    @property
    def total_s(self) -> float:
        return sum(self.unit_s.values())

    def to_state(
        self, *, name: str | None = None, load: float = 0.0, available: bool = True,
        memory_bytes: float | None = None,
    ) -> TierState:
        return TierState(name=name or self.tier, available=available, unit_s=dict(self.unit_s),
                         profile_load=self.load, load=load, memory_bytes=memory_bytes)

    def scaled(self, factor: float, *, tier: str, fingerprint: str) -> TierProfile:
        """This profile ``factor`` times faster: a stand-in for a tier not measured (say so where used)."""
        if not factor > 0.0:
            raise ConfigError(f"a speed-up must be > 0, got {factor}")
        return self.model_copy(update={
            "tier": tier, "fingerprint": fingerprint, "source": "scaled",
            "unit_s": {u: s / factor for u, s in self.unit_s.items()},
            "stages": tuple(s.model_copy(update={"seconds": s.seconds / factor}) for s in self.stages),
        })


def unit_shares(graph: UnitGraph, node_seconds: Mapping[str, float]) -> dict[str, float]:
    """Each unit's kernel seconds (the sum over its nodes)."""
    shares = {u.name: 0.0 for u in graph.units}
    for node, seconds in node_seconds.items():
        unit = graph.node_unit.get(node)
        if unit is not None:
            shares[unit] += seconds
    return {u: max(s, SHARE_FLOOR) for u, s in shares.items()}


def calibrate(
    graph: UnitGraph, shares: Mapping[str, float], timings: Sequence[StageTiming]
) -> dict[str, float]:
    """Per-unit seconds: each stage's measured time split over its units in proportion to their shares.

    A unit in several stages gets the mean of its estimates; a unit in none gets its share
    scaled by the overall ratio of measured time to share.
    """
    if not timings:
        raise InvalidInputError("calibrating a profile needs at least one measured stage")
    estimates: dict[str, list[float]] = defaultdict(list)
    measured = shared = 0.0
    for timing in timings:
        units = graph.units_between(timing.inputs, timing.outputs)
        if not units:
            raise InvalidInputError(f"stage {','.join(timing.outputs)} computes no unit of this model")
        total = sum(shares[u] for u in units)
        for u in units:
            estimates[u].append(shares[u] / total * timing.seconds)
        measured += timing.seconds
        shared += total
    ratio = measured / shared
    return {u.name: statistics.fmean(estimates[u.name]) if u.name in estimates else shares[u.name] * ratio
            for u in graph.units}


# --- profiles from stage timings ----------------------------------------------------------


def profile_remote(
    graph: UnitGraph,
    shares: Mapping[str, float],
    timings: Sequence[StageTiming],
    *,
    tier: str,
    fingerprint: str,
    load: float = 0.0,
) -> TierProfile:
    """Profile a tier from the stage times it reported (shares from a local ORT profile)."""
    return profile_from_timings(graph, shares, timings, tier=tier, fingerprint=fingerprint, source="remote",
                                load=load)


def profile_from_timings(
    graph: UnitGraph, shares: Mapping[str, float], timings: Sequence[StageTiming], *, tier: str,
    fingerprint: str, source: Literal["local", "remote"], load: float,
) -> TierProfile:
    return TierProfile(
        model_sha256=graph.model_sha256, tier=tier, fingerprint=fingerprint, granularity=graph.granularity,
        input_shapes=dict(graph.input_shapes), unit_s=calibrate(graph, shares, timings),
        stages=tuple(timings),
        load=min(max(load, 0.0), 1.0), source=source, created_unix=time.time(),
    )


def timings_from_stats(
    stats: Mapping[str, Any], stages: Iterable[tuple[Sequence[str], Sequence[str]]]
) -> list[StageTiming]:
    """Stage timings from a node's per-stage statistics (``NodeExecutor.stats``: key = the stage's
    outputs joined by commas; value = an object or dict with ``calls`` and ``total_s``).

    ``stages`` gives the inputs of each stage the node ran (the statistics key only names outputs).
    """
    by_key = {",".join(outputs): tuple(inputs) for inputs, outputs in stages}
    out: list[StageTiming] = []
    for key, stat in stats.items():
        if key not in by_key:
            continue
        calls = stat["calls"] if isinstance(stat, Mapping) else stat.calls
        total = stat["total_s"] if isinstance(stat, Mapping) else stat.total_s
        if calls and total > 0:
            out.append(StageTiming(inputs=by_key[key], outputs=tuple(key.split(",")), seconds=total / calls))
    return out


