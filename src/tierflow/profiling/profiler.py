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
stage sum to the stage's measured latency (:func:`tierflow.planner.profile.calibrate`).
A remote tier is profiled the same way from the stage timings it reports
(:func:`tierflow.planner.profile.profile_remote`).

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
from typing import Any, Protocol

import numpy as np
import onnx
from pydantic import ValidationError

from tierflow.errors import ConfigError
from tierflow.model.registry import tierflow_home
from tierflow.planner.graph import UnitGraph
from tierflow.planner.profile import StageTiming, TierProfile, profile_from_timings


class RunStage(Protocol):
    """How a tier runs a stage: ``NodeExecutor.run_stage`` or ``StageRunner.run`` (with its slowdown)."""

    def __call__(self, tensors: dict[str, np.ndarray], outputs: list[str], /) -> dict[str, np.ndarray]: ...



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
    return profile_from_timings(graph, shares, timings, tier=tier, fingerprint=fingerprint, source="local",
                                load=load)


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
