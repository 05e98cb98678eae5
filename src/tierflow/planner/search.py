"""Exact split search: the plan with the lowest score, for DAG-shaped models and up to any number of tiers.

For each *path* (the device, then any subsequence of the other available tiers in
order: ``device``, ``device->edge``, ``device->cloud``, ``device->edge->cloud``)
the per-hop constants (RTT, overhead) are fixed, and what remains is separable:

* a unary cost per unit and label (compute on that tier, returning its outputs), and
* for each tensor and each hop j, a cost paid iff the tensor crosses hop j, i.e.
  iff its producer's label is < j and some reader's label is >= j,

subject to labels never decreasing along an edge (data flows forward). With
x_{u,j} = [label(u) >= j] this is a min s-t cut (Ishikawa's layered construction):
a chain of m nodes per unit whose cut position is its label, infinite edges that
keep the x monotone in j and along the DAG, and one auxiliary node per tensor and
hop so that a tensor read by several units is paid once (as in DADS). The minimum
over paths of (path constants + min cut) is the exact optimum: a plan found on a
path whose last hops it does not need costs more there than on the shorter path.

Memory limits on a tier's whole stage are not separable; when the cut's answer
breaks one, a branch and bound over forward-consistent labelings finds the best
plan that fits (exact, but exponential: large unit graphs should be coarsened).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import networkx as nx
from networkx.algorithms.flow import preflow_push

from tierflow.errors import PlanError
from tierflow.planner.cost import INF, PathCosts, mib, unit_memory
from tierflow.planner.graph import UnitGraph
from tierflow.planner.plan import Plan, stages_for
from tierflow.planner.snapshot import Snapshot

BNB_LIMIT = 200_000  # labelings a memory-constrained search may visit before giving up
_EPS = 1e-12


def candidate_paths(snapshot: Snapshot, compute_tiers: frozenset[str] | None = None) -> list[tuple[str, ...]]:
    """Paths a plan may take: the device, then available tiers in order, every hop with a usable link."""
    device = snapshot.tiers[0].name
    others = [t.name for t in snapshot.tiers[1:] if t.available]
    paths: list[tuple[str, ...]] = []
    for r in range(len(others) + 1):
        for subset in itertools.combinations(others, r):
            path = (device, *subset)
            if len(path) > 1 and compute_tiers is not None and path[-1] not in compute_tiers:
                continue  # the last tier would only add a hop
            hops = zip(path, path[1:], strict=False)
            if all((link := snapshot.link(a, b)) is not None and link.usable for a, b in hops):
                paths.append(path)
    return paths


def min_cut_labels(costs: PathCosts) -> list[int] | None:
    """The labels minimising ``costs.score_of`` on this path (None if every labeling is forbidden)."""
    g, m = costs.graph, costs.m
    n = len(g.units)
    unary = [[costs.unary(i, label) for label in range(m + 1)] for i in range(n)]
    if m == 0:
        return [0] * n if all(row[0] < INF for row in unary) else None
    fwd = {(name, j): costs.forward(name, j) for name in g.tensors for j in range(1, m + 1)}
    finite = sum(x for row in unary for x in row if x < INF) + sum(fwd.values())
    big = 4.0 * finite + 1.0  # more than any cut made of finite edges only

    cut = nx.DiGraph()

    def add(a: object, b: object, cap: float) -> None:
        cap = min(cap, big)
        if cut.has_edge(a, b):
            cut[a][b]["capacity"] = min(cut[a][b]["capacity"] + cap, big)
        else:
            cut.add_edge(a, b, capacity=cap)

    for i in range(n):
        row = unary[i]
        add("s", (i, m), row[m])
        for j in range(1, m):
            add((i, j + 1), (i, j), row[j])
            add((i, j), (i, j + 1), big)  # label >= j+1 implies label >= j
        add((i, 1), "t", row[0])
    idx = g.index
    for name, t in g.tensors.items():
        readers = [idx[c] for c in t.consumers]
        p = idx[t.producer] if t.producer is not None else None
        for j in range(1, m + 1):
            if p is not None:
                for c in readers:
                    add((c, j), (p, j), big)  # a reader's label >= its producer's
            w = fwd[(name, j)]
            if w <= 0.0 or not readers:
                continue
            source: object = "s" if p is None else (p, j)
            if len(readers) == 1:
                add(source, (readers[0], j), w)
            else:
                z = ("z", name, j)
                add(source, z, w)
                for c in readers:
                    add(z, (c, j), big)
    residual = preflow_push(cut, "s", "t")
    if residual.graph["flow_value"] >= big:
        return None
    # The source side of the min cut: what the source still reaches in the residual graph.
    # (Reachability with a tolerance: float round-off must not reopen a saturated edge.)
    tol = 1e-12 * big
    source_side: set[object] = {"s"}
    stack: list[object] = ["s"]
    while stack:
        a = stack.pop()
        for b, edge in residual[a].items():
            if b not in source_side and edge["capacity"] - edge["flow"] > tol:
                source_side.add(b)
                stack.append(b)
    return [sum((i, j) not in source_side for j in range(1, m + 1)) for i in range(n)]


def forward_labelings(graph: UnitGraph, m: int) -> Iterator[list[int]]:
    """Every labeling in 0..m in which data flows forward (units in topological order)."""
    preds = [[graph.index[p] for p in graph.preds[u.name]] for u in graph.units]
    n = len(graph.units)
    labels = [0] * n

    def rec(i: int) -> Iterator[list[int]]:
        if i == n:
            yield list(labels)
            return
        low = max((labels[p] for p in preds[i]), default=0)
        for label in range(low, m + 1):
            labels[i] = label
            yield from rec(i + 1)

    yield from rec(0)


def _fits(costs: PathCosts, labels: Sequence[int]) -> bool:
    g, snap = costs.graph, costs.snapshot
    for label, name in enumerate(costs.path):
        cap = snap.tier(name).memory_bytes
        if cap is not None:
            units = [g.units[i].name for i, x in enumerate(labels) if x == label]
            if units and unit_memory(g, units) > cap:
                return False
    return True


def _branch_and_bound(costs: PathCosts, bound: float) -> tuple[list[int] | None, float]:
    """Best labeling that fits every tier's memory, better than ``bound`` (exact; exponential)."""
    g, m = costs.graph, costs.m
    n = len(g.units)
    preds = [[g.index[p] for p in g.preds[u.name]] for u in g.units]
    unary = [[costs.unary(i, label) for label in range(m + 1)] for i in range(n)]
    rest = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        rest[i] = rest[i + 1] + min(unary[i])
    caps = [costs.snapshot.tier(name).memory_bytes for name in costs.path]
    labels = [0] * n
    members: list[list[str]] = [[] for _ in range(m + 1)]
    best: list[int] | None = None
    best_score = bound
    visits = 0

    def rec(i: int, partial: float) -> None:
        nonlocal best, best_score, visits
        visits += 1
        if visits > BNB_LIMIT:
            raise PlanError(
                f"memory limits make the exact search too large for {n} units; plan with coarser units "
                "(granularity blocks or chain)"
            )
        if partial + rest[i] + costs.const >= best_score - _EPS:
            return
        if i == n:
            score = costs.score_of(labels)
            if score < best_score - _EPS:
                best, best_score = list(labels), score
            return
        low = max((labels[p] for p in preds[i]), default=0)
        for label in range(low, m + 1):
            if unary[i][label] == INF:
                continue
            members[label].append(g.units[i].name)
            cap = caps[label]
            if cap is None or unit_memory(g, members[label]) <= cap:
                labels[i] = label
                rec(i + 1, partial + unary[i][label])
            members[label].pop()

    rec(0, 0.0)
    return best, best_score


def make_plan(costs: PathCosts, labels: Sequence[int], *, exact: bool) -> Plan:
    g = costs.graph
    return Plan(
        path=costs.path,
        labels=tuple(labels),
        assignment={u.name: costs.path[label] for u, label in zip(g.units, labels, strict=True)},
        stages=stages_for(g, costs.path, labels),
        results=tuple(o for o in g.outputs if not (o in g.tensors and g.tensors[o].resident)),
        prediction=costs.evaluate(labels),
        exact=exact,
        granularity=g.granularity,
    )


def plan(
    graph: UnitGraph, snapshot: Snapshot, compute_tiers: frozenset[str] | set[str] | None = None
) -> Plan:
    """The exact best plan; ``compute_tiers`` limits which tiers may run units (the device still
    sends the inputs and receives the outputs). Raises :class:`PlanError` naming why none exists."""
    allowed = frozenset(compute_tiers) if compute_tiers is not None else None
    if allowed is not None:
        unknown = sorted(allowed - set(snapshot.tier_names))
        if unknown:
            raise PlanError(f"unknown tier '{unknown[0]}' (tiers: {', '.join(snapshot.tier_names)})")
    paths = candidate_paths(snapshot, allowed)
    best: tuple[float, PathCosts, list[int]] | None = None
    over_memory: list[PathCosts] = []
    reasons: list[str] = []
    for path in paths:
        costs = PathCosts(graph, snapshot, path, allowed)
        labels = min_cut_labels(costs)
        if labels is None:
            reasons.append(_why_nothing(costs))
            continue
        score = costs.score_of(labels)
        if not _fits(costs, labels):
            over_memory.append(costs)
            continue
        if best is None or score < best[0] - _EPS:
            best = (score, costs, labels)
    for costs in over_memory:
        found, score = _branch_and_bound(costs, best[0] if best else INF)
        if found is not None and (best is None or score < best[0] - _EPS):
            best = (score, costs, found)
        elif found is None and best is None:
            reasons.append(_why_no_fit(costs))
    if best is None:
        raise PlanError(_summarise(reasons, snapshot, allowed))
    return make_plan(best[1], best[2], exact=True)


def _why_nothing(costs: PathCosts) -> str:
    """Why no labeling on this path is allowed: the first unit that may run nowhere on it."""
    for i in range(len(costs.graph.units)):
        if all(costs.compute[i][label] == INF for label in range(costs.m + 1)):
            return "; ".join(dict.fromkeys(costs.why_not[(i, label)] for label in range(costs.m + 1)))
    return f"no forward-flowing placement on {' -> '.join(costs.path)}"


def _why_no_fit(costs: PathCosts) -> str:
    g = costs.graph
    total = unit_memory(g, [u.name for u in g.units])
    limits = [(name, costs.snapshot.tier(name).memory_bytes) for name in costs.path]
    caps = ", ".join(f"{name} {mib(cap)}" for name, cap in limits if cap is not None)
    return f"the model ({mib(total)}) does not fit {' -> '.join(costs.path)} ({caps})"


def _summarise(reasons: list[str], snapshot: Snapshot, allowed: frozenset[str] | None) -> str:
    if not reasons:
        tiers = ", ".join(sorted(allowed)) if allowed is not None else "any tier"
        return f"no reachable tier can run the model (allowed: {tiers})"
    unique = list(dict.fromkeys(reasons))
    return "no plan fits: " + "; ".join(unique[:3])


# --- alternatives and candidates ----------------------------------------------------------


ALTERNATIVES = ("device-only", "edge-only", "cloud-only", "best 2-tier", "best 3-tier")


def alternatives(graph: UnitGraph, snapshot: Snapshot) -> dict[str, Plan | str]:
    """The reference plans: each single tier, the best on at most two tiers, the best on three.

    A value is the plan, or the one-line reason it does not exist.
    """
    names = snapshot.tier_names
    out: dict[str, Plan | str] = {}
    for tier in names:
        try:
            out[f"{tier}-only"] = plan(graph, snapshot, {tier})
        except PlanError as exc:
            out[f"{tier}-only"] = str(exc)
    pairs: list[Plan] = []
    errors: list[str] = []
    for pair in itertools.combinations(names, 2):
        try:
            pairs.append(plan(graph, snapshot, set(pair)))
        except PlanError as exc:
            errors.append(str(exc))
    out["best 2-tier"] = min(pairs, key=lambda p: p.prediction.score) if pairs else "; ".join(errors[:1])
    try:
        out[f"best {len(names)}-tier"] = plan(graph, snapshot)
    except PlanError as exc:
        out[f"best {len(names)}-tier"] = str(exc)
    return out


def evaluate_plan(graph: UnitGraph, snapshot: Snapshot, path: Sequence[str], labels: Sequence[int]) -> Plan:
    """Score a given placement under ``snapshot`` (for re-planning and candidate grids)."""
    return make_plan(PathCosts(graph, snapshot, path), labels, exact=False)


def candidate_grid(
    graph: UnitGraph,
    snapshot: Snapshot,
    *,
    include: Sequence[Plan] = (),
    relays: bool = False,
    limit: int = 5000,
) -> list[Plan]:
    """Every plan on the unit graph in which each tier of the path computes, sorted best first.

    For a chain of n units this is: device-only; on each two-tier path every cut
    k = 0..n-1 (the device keeps units [0, k)); on the three-tier path every pair of
    cuts k1 < k2 (device [0, k1), edge [k1, k2), cloud the rest). For a DAG it is every
    forward-consistent placement. With ``relays``, plans in which the edge only passes
    tensors on are added too. The exact optimum is in the grid by construction (the
    search never keeps a path whose last tier computes nothing), unless it relays;
    plans in ``include`` are added if missing, so a chosen plan is always there.
    Raises PlanError when there are more than ``limit`` candidates (coarsen the units).
    """
    plans: list[Plan] = []
    for path in candidate_paths(snapshot):
        m = len(path) - 1
        try:
            costs = PathCosts(graph, snapshot, path)
        except PlanError:
            continue
        for labels in forward_labelings(graph, m):
            used = set(labels)
            if m and m not in used:
                continue  # the last tier computes nothing: the same plan on a shorter path
            if not relays and any(label not in used for label in range(1, m)):
                continue  # a middle tier only relays
            plans.append(make_plan(costs, labels, exact=False))
            if len(plans) > limit:
                n = len(graph.units)
                raise PlanError(f"more than {limit} candidate plans for {n} units; coarsen the units")
    keys = {p.key for p in plans}
    plans.extend(evaluate_plan(graph, snapshot, p.path, p.labels) for p in include if p.key not in keys)
    plans.sort(key=lambda p: (not p.prediction.feasible, p.prediction.score))
    return plans


def grid_size(graph: UnitGraph, snapshot: Snapshot, *, relays: bool = False, limit: int = 5000) -> int | None:
    """How many plans :func:`candidate_grid` gives, counted without scoring them (None: over ``limit``)."""
    total = 0
    for path in candidate_paths(snapshot):
        m = len(path) - 1
        for labels in forward_labelings(graph, m):
            used = set(labels)
            if m and m not in used:
                continue
            if not relays and any(label not in used for label in range(1, m)):
                continue
            total += 1
            if total > limit:
                return None
    return total


def count_forward_labelings(graph: UnitGraph, m: int) -> int:
    """How many forward-consistent labelings there are (for a chain of n units: C(n+m, m))."""
    if m == 0:
        return 1
    return sum(1 for _ in forward_labelings(graph, m))


def chain_grid_size(n_units: int, tiers: int) -> int:
    """How many plans :func:`candidate_grid` gives (no relays) for a chain of ``n_units``, all tiers up.

    On a path with r tiers after the device, every one of them must hold at least one unit
    and the device any number: compositions of n into r positive parts after a prefix.
    """
    total = 1  # device-only
    for r in range(1, tiers):
        per_path = sum(math.comb(n_units - k - 1, r - 1) for k in range(n_units - r + 1))
        total += math.comb(tiers - 1, r) * per_path
    return total
