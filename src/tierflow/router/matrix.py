"""The task-resource matrix: for each (task kind, tier) the latency to expect now.

Each cell starts from a prior (from compile-time profiling, given by the caller) and
learns online from observed latencies as an exponentially weighted mean::

    mean <- (1 - alpha) * mean + alpha * observed_unloaded      (the first observation of a
                                                                  cell without a prior is its mean)

with ``alpha`` = :data:`DEFAULT_ALPHA` (0.2: an observation's weight halves in about three
further observations, so a tier that changed speed is believed within ~10 requests while one
outlier moves the mean by a fifth of its excess). A prior counts as the mean before any
observation; ``count`` is the number of observations.

Each tier has a load factor ``load`` in 0..1: the share of the tier that other work takes
(as the planner's :class:`~tierflow.planner.snapshot.TierState` reads it). Means are kept
*unloaded*: an observation made at load ``L`` is stored as ``observed * (1 - L)``, and a
prediction at load ``L`` is ``mean / (1 - min(L, MAX_LOAD))`` -- the planner's rule, so a
fully loaded tier is at most 10x slower, never infinitely.

A tier can be marked unavailable (down, or not deployed); its cells stay, but are not feasible.

A prior can be replaced by a live estimate (:meth:`TaskResourceMatrix.set_prior`: the span
planner's prediction once a link's estimate changed); what was learned then carries over as a
ratio to the prior, so the matrix follows both the live estimate and what it observed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tierflow.errors import ConfigError, InvalidInputError, UserError
from tierflow.planner.snapshot import MAX_LOAD
from tierflow.types.tasks import TaskKind
from tierflow.types.tiers import Tier

DEFAULT_ALPHA = 0.2


def parse_tier(value: Tier | str, error: type[UserError] = InvalidInputError, where: str = "tier") -> Tier:
    """A tier from its name (any case); an unknown one raises ``error`` naming ``where``."""
    if isinstance(value, Tier):
        return value
    try:
        return Tier(str(value).strip().lower())
    except ValueError:
        raise error(f"{where}: unknown tier {value!r} (one of: {', '.join(t.value for t in Tier)})") from None


def parse_task(value: TaskKind | str, error: type[UserError] = InvalidInputError,
               where: str = "task") -> TaskKind:
    """A task kind from its name; an unknown one raises ``error`` naming ``where``."""
    try:
        return TaskKind.parse(value)
    except InvalidInputError as exc:
        raise error(f"{where}: {exc}") from None


def _seconds(value: object, what: str, error: type[UserError]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{what} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not (math.isfinite(seconds) and seconds >= 0.0):
        raise error(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class Cell:
    """One (task kind, tier) cell: its prior, its learned unloaded mean and how many observations."""

    prior_s: float | None
    mean_s: float | None  # unloaded; the prior until something is observed
    count: int


class TaskResourceMatrix:
    """Expected latency per (task kind, tier), tier loads and availability; safe to share between threads.

    ``priors`` maps task kinds to ``{tier: seconds}`` (names or enums, as loaded from YAML or
    JSON); an unknown name or a negative / non-finite prior raises :class:`ConfigError`.
    """

    def __init__(
        self,
        priors: Mapping[TaskKind | str, Mapping[Tier | str, float]] | None = None,
        *,
        alpha: float = DEFAULT_ALPHA,
    ) -> None:
        if isinstance(alpha, bool) or not (isinstance(alpha, int | float) and 0.0 < alpha <= 1.0):
            raise ConfigError(f"matrix weight alpha must be in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self._lock = threading.Lock()
        self._cells: dict[tuple[TaskKind, Tier], Cell] = {}
        self._load: dict[Tier, float] = {t: 0.0 for t in Tier}
        self._available: dict[Tier, bool] = {t: True for t in Tier}
        for task_name, row in (priors or {}).items():
            task = parse_task(task_name, ConfigError, "priors")
            if not isinstance(row, Mapping):
                raise ConfigError(f"priors.{task}: expected a mapping of tier -> seconds, got {row!r}")
            for tier_name, seconds in row.items():
                tier = parse_tier(tier_name, ConfigError, f"priors.{task}")
                prior = _seconds(seconds, f"priors.{task}.{tier}", ConfigError)
                self._cells[(task, tier)] = Cell(prior_s=prior, mean_s=prior, count=0)

    # --- learning ----------------------------------------------------------------------------

    def observe(self, task: TaskKind | str, tier: Tier | str, latency_s: float) -> Cell:
        """Learn from one observed latency of ``task`` on ``tier`` (at the tier's current load)."""
        kind, where = parse_task(task), parse_tier(tier)
        seconds = _seconds(latency_s, "observed latency", InvalidInputError)
        with self._lock:
            unloaded = seconds / _slowdown(self._load[where])
            old = self._cells.get((kind, where), Cell(None, None, 0))
            mean = unloaded if old.mean_s is None else (1.0 - self.alpha) * old.mean_s + self.alpha * unloaded
            cell = Cell(prior_s=old.prior_s, mean_s=mean, count=old.count + 1)
            self._cells[(kind, where)] = cell
            return cell

    def set_prior(self, task: TaskKind | str, tier: Tier | str, prior_s: float) -> Cell:
        """Replace the prior of a cell with a live estimate (the planner's, after a link or a tier changed).

        What was learned is kept relative to the prior: a cell observed 20 % slower than its old prior
        expects 20 % over the new one (``mean <- mean * new / old``); a cell without a learned mean
        takes the new prior as its mean.
        """
        kind, where = parse_task(task), parse_tier(tier)
        seconds = _seconds(prior_s, f"prior of {kind} on {where}", InvalidInputError)
        with self._lock:
            old = self._cells.get((kind, where), Cell(None, None, 0))
            if old.count and old.mean_s is not None and old.prior_s:
                mean = old.mean_s * seconds / old.prior_s
            elif old.count and old.mean_s is not None:
                mean = old.mean_s  # learned without a prior: nothing to scale by
            else:
                mean = seconds
            cell = Cell(prior_s=seconds, mean_s=mean, count=old.count)
            self._cells[(kind, where)] = cell
            return cell

    def set_load(self, tier: Tier | str, load: float) -> None:
        """Set the share of ``tier`` that other work takes (0..1)."""
        where = parse_tier(tier)
        if isinstance(load, bool) or not isinstance(load, int | float) or not (0.0 <= load <= 1.0):
            raise InvalidInputError(f"load of {where} must be a number in 0..1, got {load!r}")
        with self._lock:
            self._load[where] = float(load)

    def set_available(self, tier: Tier | str, available: bool) -> None:
        """Mark ``tier`` up or down."""
        where = parse_tier(tier)
        with self._lock:
            self._available[where] = bool(available)

    # --- reading -----------------------------------------------------------------------------

    def available(self, tier: Tier | str) -> bool:
        with self._lock:
            return self._available[parse_tier(tier)]

    def load(self, tier: Tier | str) -> float:
        with self._lock:
            return self._load[parse_tier(tier)]

    def slowdown(self, tier: Tier | str) -> float:
        """How many times slower than unloaded ``tier`` is predicted now (1 when idle)."""
        with self._lock:
            return _slowdown(self._load[parse_tier(tier)])

    def cell(self, task: TaskKind | str, tier: Tier | str) -> Cell:
        """The cell of (``task``, ``tier``); an empty one (no prior, no observation) if never seen."""
        key = (parse_task(task), parse_tier(tier))
        with self._lock:
            return self._cells.get(key, Cell(None, None, 0))

    def predict(self, task: TaskKind | str, tier: Tier | str) -> float | None:
        """Expected latency of ``task`` on ``tier`` at its current load; None when nothing is known.

        Availability is not looked at here (see :meth:`available`).
        """
        key = (parse_task(task), parse_tier(tier))
        with self._lock:
            return self._predict(key)

    def _predict(self, key: tuple[TaskKind, Tier]) -> float | None:
        cell = self._cells.get(key)
        if cell is None or cell.mean_s is None:
            return None
        return cell.mean_s * _slowdown(self._load[key[1]])

    def snapshot(self) -> dict[str, Any]:
        """Plain, JSON-ready dicts (what ``GET /routing/matrix`` serves)::

            {"alpha": 0.2,
             "tiers": {"device": {"available": true, "load": 0.0}, ...},
             "tasks": {"image_1024": {"edge": {"expected_s": 1.1, "prior_s": 1.2, "mean_s": 1.1,
                                                "count": 3, "feasible": true}, ...}, ...}}

        Every task kind and tier appears; ``feasible`` = the tier is available and something is known.
        """
        with self._lock:
            tiers = {t.value: {"available": self._available[t], "load": self._load[t]} for t in Tier}
            tasks: dict[str, dict[str, dict[str, Any]]] = {}
            for kind in TaskKind:
                row: dict[str, dict[str, Any]] = {}
                for tier in Tier:
                    cell = self._cells.get((kind, tier), Cell(None, None, 0))
                    expected = self._predict((kind, tier))
                    row[tier.value] = {
                        "expected_s": expected,
                        "prior_s": cell.prior_s,
                        "mean_s": cell.mean_s,
                        "count": cell.count,
                        "feasible": self._available[tier] and expected is not None,
                    }
                tasks[kind.value] = row
            return {"alpha": self.alpha, "tiers": tiers, "tasks": tasks}


def _slowdown(load: float) -> float:
    return 1.0 / (1.0 - min(load, MAX_LOAD))
