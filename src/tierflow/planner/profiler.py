"""Profiling: how long each unit takes on a tier, measured as that tier runs it.

Two measurements are combined:

1. **Shares** -- ONNX Runtime's own profiler (``SessionOptions.enable_profiling``)
   gives each node's kernel time in one local session. The session runs at the
   *basic* optimisation level so that node names survive (the extended levels
   fuse nodes into new names); a fused-away node's time shows up in the node it
   was folded into, which sits in the same or the next unit.
2. **Stage latencies** -- a tier runs stages of the model end to end through its
   own executor (its threads, precision, execution provider and, on a simulated
   weak device, its slowdown), and the wall time of each stage is measured.

Each unit's time is its share of the stage it ran in, scaled so the units of the
stage sum to the stage's measured latency (:func:`calibrate`). So a tier that is
three times slower -- for any reason, simulated or real -- is measured three times
slower; nothing reads a setting. A remote tier is profiled the same way from the
stage timings it reports (:func:`profile_remote`).

Profiles are cached per (model sha256, tier fingerprint, input shapes, unit
granularity) under ``tierflow_home()/profiles`` (:class:`ProfileCache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tierflow.errors import ConfigError, InvalidInputError
from tierflow.model.registry import tierflow_home
from tierflow.planner.graph import UnitGraph
from tierflow.planner.snapshot import TierState

SHARE_FLOOR = 1e-9  # seconds: a unit the profiler saw no kernel of still takes some time


class RunStage(Protocol):
    """How a tier runs a stage: ``NodeExecutor.run_stage`` or ``StageRunner.run`` (with its slowdown)."""

    def __call__(self, tensors: dict[str, np.ndarray], outputs: list[str], /) -> dict[str, np.ndarray]: ...


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


# --- ONNX Runtime's per-node profile --------------------------------------------------------


def node_times(
    model: onnx.ModelProto | bytes,
    feeds: Mapping[str, np.ndarray],
    *,
    runs: int = 2,
    threads: int = 1,
    providers: Sequence[str] | None = None,
) -> dict[str, float]:
    """Mean kernel seconds per node name over ``runs`` profiled runs (after one warm-up run)."""
    import onnxruntime as ort

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model)
    with tempfile.TemporaryDirectory(prefix="tierflow-prof-") as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = max(threads, 1)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(proto.SerializeToString(), so,
                                       providers=list(providers or ["CPUExecutionProvider"]))
        names = [o.name for o in session.get_outputs()]
        for _ in range(1 + max(runs, 1)):  # the first run warms up (allocations, first-run costs)
            session.run(names, dict(feeds))
        path = session.end_profiling()
        events = json.loads(Path(path).read_text(encoding="utf-8"))
    return _per_node(proto, events, max(runs, 1))


def _per_node(proto: onnx.ModelProto, events: list[dict[str, Any]], runs: int) -> dict[str, float]:
    node_names = {n.name for n in proto.graph.node if n.name}
    by_output = {o: n.name for n in proto.graph.node for o in n.output if n.name}
    starts = sorted(float(e["ts"]) for e in events if e.get("name") == "model_run")
    after_us = starts[1] if len(starts) > 1 else 0.0  # events before the second run belong to the warm-up
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if float(e.get("ts", 0)) < after_us:
            continue  # the warm-up run
        name = _resolve(str(e["name"])[: -len("_kernel_time")], node_names, by_output)
        if name is not None:
            totals[name] += float(e.get("dur", 0)) / 1e6
    return {k: v / runs for k, v in totals.items()}


def _resolve(event: str, node_names: set[str], by_output: Mapping[str, str]) -> str | None:
    """The graph node an ORT event belongs to; fused nodes are named after what they fused."""
    if event in node_names:
        return event
    best: str | None = None
    for candidates, lookup in ((node_names, None), (by_output.keys(), by_output)):
        for name in candidates:
            if event.startswith(name) and (best is None or len(name) > len(best)):
                best = name if lookup is None else lookup[name]
    return best


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


# --- measuring a tier ---------------------------------------------------------------------


def measure_stage(
    run: RunStage,
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    *,
    runs: int = 3,
    warmup: int = 1,
) -> float:
    """Median wall seconds of ``run(feeds, outputs)`` after ``warmup`` runs."""
    for _ in range(warmup):
        run(dict(feeds), list(outputs))
    times: list[float] = []
    for _ in range(max(runs, 1)):
        started = time.perf_counter()
        run(dict(feeds), list(outputs))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def profile_local(
    graph: UnitGraph,
    run: RunStage,
    feeds: Mapping[str, np.ndarray],
    shares: Mapping[str, float],
    *,
    tier: str,
    fingerprint: str,
    runs: int = 3,
    stages: Iterable[tuple[Sequence[str], Sequence[str]]] | None = None,
    load: float = 0.0,
) -> TierProfile:
    """Profile a tier by running stages as it runs them (default: the whole model as one stage).

    ``stages`` are ``(inputs, outputs)`` pairs; their inputs are computed first with
    ``run``, outside the timed runs.
    """
    wanted = list(stages) if stages is not None else [(graph.inputs, graph.outputs)]
    have: dict[str, np.ndarray] = dict(feeds)
    timings: list[StageTiming] = []
    for inputs, outputs in wanted:
        missing = [t for t in inputs if t not in have]
        if missing:
            have.update(run(dict(feeds), missing))
        stage_feeds = {t: have[t] for t in inputs}
        seconds = measure_stage(run, stage_feeds, outputs, runs=runs)
        timings.append(StageTiming(inputs=tuple(inputs), outputs=tuple(outputs), seconds=seconds))
    return _profile(graph, shares, timings, tier=tier, fingerprint=fingerprint, source="local", load=load)


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
    return _profile(graph, shares, timings, tier=tier, fingerprint=fingerprint, source="remote", load=load)


def _profile(
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


def load_timings(path: str | Path) -> list[StageTiming]:
    """Stage timings from a JSON file: ``{"stages": [{"inputs": [...], "outputs": [...], "seconds": s}]}``."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        rows = raw["stages"] if isinstance(raw, dict) else raw
        return [StageTiming.model_validate(r) for r in rows]
    except OSError as exc:
        raise ConfigError(f"cannot read stage timings {p}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise ConfigError(f"{p}: not stage timings ({type(exc).__name__}); expected "
                          '{"stages": [{"inputs": [...], "outputs": [...], "seconds": s}]}') from None


# --- identity and cache ---------------------------------------------------------------------


def tier_fingerprint(tier: str, **config: Any) -> str:
    """A short hash of a tier: the machine, ONNX Runtime, and how the tier is configured.

    ``config`` is whatever sets the tier apart (threads, providers, precision, a simulated
    slowdown); it only tells cached profiles apart -- the planner never reads it.
    """
    import onnxruntime as ort

    ident = {
        "tier": tier,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "ort": ort.__version__,
        **{k: config[k] for k in sorted(config)},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ProfileCache:
    """Profiles on disk, one JSON file per (model, tier fingerprint, input shapes, granularity)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else tierflow_home() / "profiles"

    def path(self, model_sha256: str, fingerprint: str, graph: UnitGraph) -> Path:
        ident = {"shapes": graph.input_shapes, "granularity": graph.granularity}
        shape_key = json.dumps(ident, sort_keys=True)
        h = hashlib.sha256(shape_key.encode()).hexdigest()[:8]
        return self.root / f"{model_sha256[:16]}-{fingerprint}-{h}.json"

    def get(self, graph: UnitGraph, fingerprint: str) -> TierProfile | None:
        p = self.path(graph.model_sha256, fingerprint, graph)
        try:
            profile = TierProfile.model_validate_json(p.read_bytes())
        except (OSError, ValidationError, ValueError):
            return None  # absent or unreadable: profile again
        if set(profile.unit_s) != {u.name for u in graph.units} or profile.model_sha256 != graph.model_sha256:
            return None
        return profile

    def put(self, graph: UnitGraph, profile: TierProfile) -> Path:
        p = self.path(graph.model_sha256, profile.fingerprint, graph)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(profile.model_dump_json(indent=1), encoding="utf-8")
        tmp.replace(p)  # atomic: readers never see half a file
        return p
