"""Differential privacy: sigma from (epsilon, delta), clipping, noise scale, accounting, channel use."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tierflow.errors import ConfigError, InvalidInputError, PrivacyBudgetError
from tierflow.wire import GaussianMechanism, PrivacyAccountant, parse_frame
from tierflow.wire.frame import FrameLimits
from tierflow.wire.privacy import analytic_sigma, classic_sigma, gaussian_delta

from .conftest import make_pair


def test_classic_sigma_formula() -> None:
    assert classic_sigma(0.5, 1e-5, 2.0) == pytest.approx(math.sqrt(2 * math.log(1.25e5)) * 2.0 / 0.5)


@pytest.mark.parametrize("epsilon", [1.0, 3.0])
def test_classic_bound_refuses_epsilon_of_one_or_more(epsilon) -> None:
    with pytest.raises(ConfigError, match="epsilon < 1"):
        classic_sigma(epsilon, 1e-5, 1.0)
    with pytest.raises(ConfigError, match="analytic"):
        GaussianMechanism(epsilon, 1e-5, 1.0)


@pytest.mark.parametrize(("epsilon", "delta"), [(0.1, 1e-5), (0.5, 1e-6), (0.9, 1e-3)])
def test_analytic_sigma_is_tight_and_below_classic(epsilon, delta) -> None:
    sigma = analytic_sigma(epsilon, delta, 1.0)
    assert sigma < classic_sigma(epsilon, delta, 1.0)
    assert gaussian_delta(sigma, epsilon, 1.0) <= delta
    assert gaussian_delta(sigma * 0.999, epsilon, 1.0) > delta


def test_analytic_sigma_works_beyond_epsilon_one_and_scales_with_sensitivity() -> None:
    s1 = analytic_sigma(4.0, 1e-6, 1.0)
    assert gaussian_delta(s1, 4.0, 1.0) <= 1e-6 < gaussian_delta(s1 * 0.999, 4.0, 1.0)
    assert analytic_sigma(4.0, 1e-6, 3.0) == pytest.approx(3 * s1, rel=1e-9)
    assert GaussianMechanism(4.0, 1e-6, 1.0, method="analytic").sigma == pytest.approx(s1)


@pytest.mark.parametrize(
    ("epsilon", "delta", "clip"),
    [(0.0, 1e-5, 1.0), (-1.0, 1e-5, 1.0), (float("nan"), 1e-5, 1.0), (0.5, 0.0, 1.0), (0.5, 1.0, 1.0),
     (0.5, 1e-5, 0.0), (0.5, 1e-5, float("inf"))],
)  # fmt: skip
def test_parameters_are_validated(epsilon, delta, clip) -> None:
    with pytest.raises(ConfigError):
        GaussianMechanism(epsilon, delta, clip)
    with pytest.raises(ConfigError):
        GaussianMechanism(epsilon, delta, clip, method="analytic")


def test_clipping_bounds_the_norm_per_tensor_and_per_row() -> None:
    x = np.random.default_rng(0).standard_normal((50, 32)).astype(np.float32) * 5
    whole = GaussianMechanism(0.5, 1e-5, 3.0).clip(x)
    assert np.linalg.norm(whole.astype(np.float64)) <= 3.0
    # the direction is kept
    np.testing.assert_allclose(whole / np.linalg.norm(whole), x / np.linalg.norm(x), rtol=1e-5)
    rows = GaussianMechanism(0.5, 1e-5, 3.0, per_row=True).clip(x.astype(np.float16))
    assert np.linalg.norm(rows.astype(np.float64), axis=1).max() <= 3.0
    small = x / 1000
    # under the bound: unchanged
    np.testing.assert_array_equal(GaussianMechanism(0.5, 1e-5, 3.0).clip(small), small)


def test_noise_scale_matches_sigma() -> None:
    mech = GaussianMechanism(0.5, 1e-5, 1.0)
    noisy = mech.apply(np.zeros(400_000, np.float32), rng=1)
    assert noisy.std() == pytest.approx(mech.sigma, rel=0.01)
    assert abs(noisy.mean()) < 4 * mech.sigma / math.sqrt(noisy.size)


def test_noise_is_seeded_and_does_not_touch_the_input() -> None:
    mech = GaussianMechanism(0.5, 1e-5, 1.0, per_row=True)
    x = np.ones((8, 4), np.float32)
    before = x.copy()
    a, b, c = mech.apply(x, rng=7), mech.apply(x, rng=7), mech.apply(x, rng=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(x, before)
    assert a.dtype == np.float32


def test_privatizing_needs_finite_floats() -> None:
    mech = GaussianMechanism(0.5, 1e-5, 1.0)
    with pytest.raises(InvalidInputError):
        mech.apply(np.arange(5))
    with pytest.raises(InvalidInputError):
        mech.apply(np.array([1.0, np.nan], np.float32))


def test_accountant_composes_simply_and_refuses_beyond_the_budget() -> None:
    acc = PrivacyAccountant(epsilon_budget=1.2, delta_budget=1e-4)
    acc.spend(0.5, 1e-5)
    acc.spend(0.5, 1e-5)
    with pytest.raises(PrivacyBudgetError, match="budget exhausted"):
        acc.spend(0.5, 1e-5)
    assert (acc.epsilon_spent, acc.delta_spent, acc.releases) == (1.0, 2e-5, 2)
    with pytest.raises(ConfigError):
        PrivacyAccountant(epsilon_budget=0)


def test_channel_noises_before_sealing_and_stops_at_the_budget() -> None:
    mech = GaussianMechanism(0.5, 1e-5, clip_norm=10.0)
    sender, receiver = make_pair(privacy=mech, accountant=PrivacyAccountant(epsilon_budget=1.0), rng=3)
    x = np.zeros((64, 64), np.float32)
    frame = sender.seal(x, mode="fp16")
    assert parse_frame(frame, FrameLimits()).header.dp
    y = receiver.open(frame)
    assert y.std() == pytest.approx(mech.sigma, rel=0.05)
    sender.seal(x, mode="fp16")
    with pytest.raises(PrivacyBudgetError):
        sender.seal(x, mode="fp16")
    assert sender.accountant is not None and sender.accountant.releases == 2
    plain, _ = make_pair()
    assert not parse_frame(plain.seal(x), FrameLimits()).header.dp
