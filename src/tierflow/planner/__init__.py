"""The split decision engine: where to cut a model between device, edge and cloud.

Pure planning over immutable snapshots (:mod:`.graph`, :mod:`.snapshot`, :mod:`.cost`,
:mod:`.search`, :mod:`.plan`, :mod:`.replan`), profiles as values (:mod:`.profile`) and the
online estimators fed by observations (:mod:`.estimate`). Building the unit graph from an
ONNX model and measuring tiers is :mod:`tierflow.profiling`. See docs/PLANNER.md.
"""

from tierflow.planner.cost import PathCosts, Prediction
from tierflow.planner.graph import UnitGraph
from tierflow.planner.plan import Plan, Stage, run_stages
from tierflow.planner.replan import Decision, Replanner, ReplanPolicy, replay
from tierflow.planner.search import alternatives, candidate_grid, evaluate_plan, plan
from tierflow.planner.snapshot import LinkState, Snapshot, TierState, Trace, links_for

__all__ = [
    "Decision",
    "LinkState",
    "PathCosts",
    "Plan",
    "Prediction",
    "ReplanPolicy",
    "Replanner",
    "Snapshot",
    "Stage",
    "TierState",
    "Trace",
    "UnitGraph",
    "alternatives",
    "candidate_grid",
    "evaluate_plan",
    "links_for",
    "plan",
    "replay",
    "run_stages",
]
