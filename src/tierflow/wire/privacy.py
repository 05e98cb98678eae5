"""Optional differential privacy on tensors leaving a device: the Gaussian mechanism with L2 clipping.

A release is one tensor (per-tensor clipping: the unit of privacy is the whole tensor) or each row
along the last axis (per-row clipping: the unit is one row, e.g. one token position). Clipping bounds
the L2 sensitivity by ``clip_norm``; noise N(0, sigma^2) is added to every element, with sigma from

* ``classic``: sigma = sqrt(2 ln(1.25 / delta)) * C / epsilon (Dwork & Roth, Theorem A.1), which is
  only a valid bound for epsilon < 1 -- larger epsilon is refused;
* ``analytic``: the smallest sigma with Phi(C/2s - eps*s/C) - e^eps * Phi(-C/2s - eps*s/C) <= delta
  (Balle & Wang 2018, Theorem 8), exact for any epsilon > 0 and never larger than the classic sigma.

Frames compose simply: k releases cost (k * epsilon, k * delta); :class:`PrivacyAccountant` keeps the
sum and refuses a release that would exceed a budget.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tierflow.errors import ConfigError, InvalidInputError, PrivacyBudgetError

Method = Literal["classic", "analytic"]
MAX_ANALYTIC_EPSILON = 100.0


def _check(epsilon: float, delta: float, sensitivity: float) -> None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"epsilon must be a positive number, got {epsilon}")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")
    if not (math.isfinite(sensitivity) and sensitivity > 0):
        raise ConfigError(f"clip norm (sensitivity) must be a positive number, got {sensitivity}")


def classic_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """sigma = sqrt(2 ln(1.25/delta)) * sensitivity / epsilon; valid for 0 < epsilon < 1 only."""
    _check(epsilon, delta, sensitivity)
    if epsilon >= 1:
        raise ConfigError(
            f"the classic Gaussian bound holds only for epsilon < 1, got {epsilon}; use method 'analytic'"
        )
    return math.sqrt(2 * math.log(1.25 / delta)) * sensitivity / epsilon


def _phi(t: float) -> float:
    return 0.5 * math.erfc(-t / math.sqrt(2))


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """The exact delta of the Gaussian mechanism with noise ``sigma`` at ``epsilon`` (Balle & Wang)."""
    a = sensitivity / (2 * sigma)
    b = epsilon * sigma / sensitivity
    return _phi(a - b) - math.exp(epsilon) * _phi(-a - b)


def analytic_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """The smallest sigma giving (epsilon, delta)-DP for L2 sensitivity ``sensitivity``, by bisection."""
    _check(epsilon, delta, sensitivity)
    if epsilon > MAX_ANALYTIC_EPSILON:
        raise ConfigError(f"epsilon above {MAX_ANALYTIC_EPSILON} gives no meaningful privacy, got {epsilon}")
    lo, hi = 1e-8 * sensitivity, sensitivity
    while gaussian_delta(hi, epsilon, sensitivity) > delta:  # delta(sigma) falls as sigma grows
        lo, hi = hi, hi * 2
    for _ in range(200):  # bisect in log space; ends far below float resolution of sigma
        mid = math.sqrt(lo * hi)
        if gaussian_delta(mid, epsilon, sensitivity) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi


@dataclass(frozen=True)
class GaussianMechanism:
    """Clip to L2 norm ``clip_norm`` (per tensor or per row), then add N(0, sigma^2) to every element."""

    epsilon: float
    delta: float
    clip_norm: float
    per_row: bool = False
    method: Method = "classic"
    sigma: float = field(init=False)

    def __post_init__(self) -> None:
        if self.method == "classic":
            sigma = classic_sigma(self.epsilon, self.delta, self.clip_norm)
        elif self.method == "analytic":
            sigma = analytic_sigma(self.epsilon, self.delta, self.clip_norm)
        else:
            raise ConfigError(f"unknown DP method {self.method!r} (classic or analytic)")
        object.__setattr__(self, "sigma", sigma)

    def clip(self, x: np.ndarray) -> np.ndarray:
        """A copy of ``x`` whose L2 norm (per tensor, or per row of the last axis) is <= clip_norm."""
        x = _float_array(x)
        return self._clip64(x, margin=float(np.finfo(x.dtype).eps)).astype(x.dtype)

    def apply(self, x: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Clip, then add Gaussian noise; same dtype and shape as ``x``. Seed ``rng`` for reproducible tests.

        Noise is added in float64 to the clipped values; rounding the result to ``x``'s dtype afterwards
        is post-processing and costs no privacy.
        """
        x = _float_array(x)
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        work = self._clip64(x, margin=0.0)
        noise = gen.standard_normal(work.shape, dtype=np.float32)
        noise *= np.float32(self.sigma)
        work += noise
        return work.astype(x.dtype)

    def _clip64(self, x: np.ndarray, margin: float) -> np.ndarray:
        work = x.astype(np.float64)  # a copy: the caller's tensor is never modified
        rows = work.reshape(-1, work.shape[-1]) if self.per_row and work.ndim >= 2 else work.reshape(1, -1)
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        # the margin keeps the norm <= C after rounding to a narrower float
        factors = np.minimum(1.0, self.clip_norm * (1 - margin) / np.maximum(norms, 1e-300))
        rows *= factors[:, None]
        return work


class PrivacyAccountant:
    """Sums the (epsilon, delta) of releases by simple composition; refuses to go over a budget."""

    def __init__(self, epsilon_budget: float | None = None, delta_budget: float | None = None) -> None:
        if epsilon_budget is not None and not epsilon_budget > 0:
            raise ConfigError(f"epsilon budget must be positive, got {epsilon_budget}")
        if delta_budget is not None and not 0 < delta_budget < 1:
            raise ConfigError(f"delta budget must be in (0, 1), got {delta_budget}")
        self.epsilon_budget = epsilon_budget
        self.delta_budget = delta_budget
        self.epsilon_spent = 0.0
        self.delta_spent = 0.0
        self.releases = 0
        self._lock = threading.Lock()

    def spend(self, epsilon: float, delta: float, releases: int = 1) -> None:
        """Record ``releases`` releases at (epsilon, delta) each; over budget, raise and record none."""
        with self._lock:
            eps = self.epsilon_spent + releases * epsilon
            dlt = self.delta_spent + releases * delta
            over_eps = self.epsilon_budget is not None and eps > self.epsilon_budget * (1 + 1e-12)
            over_dlt = self.delta_budget is not None and dlt > self.delta_budget * (1 + 1e-12)
            if over_eps or over_dlt:
                raise PrivacyBudgetError(
                    f"privacy budget exhausted: spent (epsilon={self.epsilon_spent:g}, "
                    f"delta={self.delta_spent:g}) of ({self.epsilon_budget}, {self.delta_budget}); "
                    f"another release needs "
                    f"({releases * epsilon:g}, {releases * delta:g})"
                )
            self.epsilon_spent, self.delta_spent = eps, dlt
            self.releases += releases


def _float_array(x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray | np.generic):
        raise InvalidInputError(f"expected a numpy array, got {type(x).__name__}")
    x = np.asarray(x)
    if x.dtype not in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64)):
        raise InvalidInputError(f"differential privacy needs a float tensor, got {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise InvalidInputError("cannot privatize a tensor holding NaN or Inf")
    return x
