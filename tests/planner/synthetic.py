"""Small synthetic unit graphs and snapshots (no ONNX) for the search and policy tests."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

from tierflow.planner.cost import INF, PathCosts
from tierflow.planner.graph import TensorInfo, Unit, UnitGraph
from tierflow.planner.search import candidate_paths
from tierflow.planner.snapshot import LinkState, Snapshot, TierState


def make_graph(
    n: int,
    edges: Sequence[tuple[int, int]],
    rng: random.Random,
    *,
    outputs: Sequence[int] | None = None,
    input_readers: Sequence[int] = (0,),
) -> UnitGraph:
    """Units u0..u{n-1}; each unit writes one tensor t{i}, read by its successors in ``edges``."""
    names = [f"u{i}" for i in range(n)]
    succ: dict[int, list[int]] = {i: [] for i in range(n)}
    for a, b in edges:
        assert a < b
        succ[a].append(b)
    sinks = [i for i in range(n) if not succ[i]]
    outs = set(outputs if outputs is not None else sinks) | set(sinks)
    tensors: dict[str, TensorInfo] = {}
    size = lambda: rng.choice([64, 4096, 40_000, 400_000, 2_000_000])  # noqa: E731
    nb = size()
    tensors["x"] = TensorInfo(
        name="x",
        dtype="float32",
        shape=(nb // 4,),
        nbytes=nb,
        producer=None,
        consumers=tuple(names[i] for i in input_readers),
    )
    for i in range(n):
        nb = size()
        tensors[f"t{i}"] = TensorInfo(
            name=f"t{i}",
            dtype=rng.choice(["float32", "float32", "int64"]),
            shape=(nb // 8,),
            nbytes=(nb // 8) * 8,
            producer=names[i],
            consumers=tuple(names[j] for j in sorted(succ[i])),
            output=i in outs,
        )
    units = []
    for i in range(n):
        ins = tuple(t.name for t in tensors.values() if names[i] in t.consumers)
        weights = (f"w{i}", "shared") if i % 3 == 0 else (f"w{i}",)
        units.append(
            Unit(
                name=names[i],
                nodes=(names[i],),
                inputs=ins,
                outputs=(f"t{i}",),
                weights=weights,
                weight_bytes=0,
                activation_bytes=sum(tensors[t].nbytes for t in ins),
            )
        )
    weight_sizes = {f"w{i}": rng.choice([1, 10, 50]) * 2**20 for i in range(n)} | {"shared": 5 * 2**20}
    return UnitGraph(
        model_sha256="0" * 64,
        granularity="node",
        input_shapes={"x": tensors["x"].shape},
        inputs=("x",),
        outputs=tuple(f"t{i}" for i in sorted(outs)),
        units=tuple(units),
        tensors=tensors,
        weight_sizes=weight_sizes,
    )


def random_dag(n: int, rng: random.Random, density: float = 0.35) -> list[tuple[int, int]]:
    edges = [(i, i + 1) for i in range(n - 1) if rng.random() < 0.8]
    for a, b in itertools.combinations(range(n), 2):
        if b > a + 1 and rng.random() < density:
            edges.append((a, b))
    return edges


def make_snapshot(graph: UnitGraph, rng: random.Random, tiers: int = 3, **extra: object) -> Snapshot:
    names = ["device", "edge", "cloud"][:tiers]
    speed = {"device": 1.0, "edge": rng.uniform(0.1, 1.0), "cloud": rng.uniform(0.02, 0.5)}
    base = {u.name: rng.uniform(0.001, 0.05) for u in graph.units}
    states = tuple(
        TierState(name=t, unit_s={u: s * speed[t] * rng.uniform(0.7, 1.3) for u, s in base.items()})
        for t in names
    )

    def link(a: str, b: str) -> LinkState:
        return LinkState(
            a=a,
            b=b,
            up_bps=rng.choice([2e5, 2e6, 2e7, 1e8, 1e9]),
            down_bps=rng.choice([1e6, 3e7, 1e9]),
            rtt_s=rng.choice([0.0, 0.005, 0.05, 0.3]),
            overhead_s=rng.choice([0.0, 0.002]),
        )

    links = tuple(link(a, b) for a, b in itertools.combinations(names, 2))
    return Snapshot(tiers=states, links=links, **extra)  # type: ignore[arg-type]


def brute_force(
    graph: UnitGraph, snapshot: Snapshot, compute_tiers: frozenset[str] | None = None
) -> tuple[float, tuple[str, ...], tuple[int, ...]] | None:
    """Best (score, path, labels) by trying every label of every unit on every path; feasible plans only."""
    best: tuple[float, tuple[str, ...], tuple[int, ...]] | None = None
    for path in candidate_paths(snapshot, compute_tiers):
        costs = PathCosts(graph, snapshot, path, compute_tiers)
        for labels in itertools.product(range(len(path)), repeat=len(graph.units)):
            if any(costs.compute[i][x] == INF for i, x in enumerate(labels)):
                continue
            try:
                pred = costs.evaluate(labels)
            except Exception:  # data flowing backwards
                continue
            if pred.violations:
                continue
            if best is None or pred.score < best[0]:
                best = (pred.score, path, labels)
    return best


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
