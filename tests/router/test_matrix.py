"""The task-resource matrix: priors, online learning, load, availability and its snapshot."""

from __future__ import annotations

import json
import math

import pytest

from tierflow.errors import ConfigError, InvalidInputError
from tierflow.router.matrix import TaskResourceMatrix
from tierflow.types.tasks import TaskKind
from tierflow.types.tiers import Tier


def test_prior_is_the_prediction_until_something_is_observed() -> None:
    m = TaskResourceMatrix({"text_short": {"edge": 0.25}})
    assert m.predict(TaskKind.TEXT_SHORT, Tier.EDGE) == pytest.approx(0.25)
    assert m.predict(TaskKind.TEXT_SHORT, Tier.CLOUD) is None
    assert m.cell("text_short", "edge").count == 0


def test_observations_move_the_mean_by_the_documented_weight() -> None:
    m = TaskResourceMatrix({"clip": {"cloud": 1.0}}, alpha=0.2)
    m.observe("clip", "cloud", 2.0)  # 0.8 * 1.0 + 0.2 * 2.0
    assert m.predict("clip", "cloud") == pytest.approx(1.2)
    m.observe("clip", "cloud", 2.0)  # 0.8 * 1.2 + 0.2 * 2.0
    assert m.predict("clip", "cloud") == pytest.approx(1.36)
    cell = m.cell("clip", "cloud")
    assert (cell.prior_s, cell.count) == (1.0, 2)


def test_first_observation_without_a_prior_is_the_mean() -> None:
    m = TaskResourceMatrix()
    m.observe(TaskKind.CRACK_DETECT, Tier.DEVICE, 0.3)
    m.observe(TaskKind.CRACK_DETECT, Tier.DEVICE, 0.8)  # 0.8 * 0.3 + 0.2 * 0.8
    assert m.predict(TaskKind.CRACK_DETECT, Tier.DEVICE) == pytest.approx(0.4)


def test_many_observations_converge_to_the_new_speed() -> None:
    m = TaskResourceMatrix({"text_long": {"edge": 10.0}})
    for _ in range(40):
        m.observe("text_long", "edge", 2.0)
    assert m.predict("text_long", "edge") == pytest.approx(2.0, rel=1e-3)


def test_load_scales_the_prediction_and_observations_are_kept_unloaded() -> None:
    m = TaskResourceMatrix({"image_512": {"edge": 1.0}})
    m.set_load("edge", 0.5)  # half the edge taken by others: twice as slow
    assert m.predict("image_512", "edge") == pytest.approx(2.0)
    m.observe("image_512", "edge", 2.0)  # as slow as predicted under load -> unloaded 1.0, unchanged
    m.set_load("edge", 0.0)
    assert m.predict("image_512", "edge") == pytest.approx(1.0)


def test_full_load_is_capped_like_the_planner() -> None:
    m = TaskResourceMatrix({"clip": {"device": 0.1}})
    m.set_load("device", 1.0)
    predicted = m.predict("clip", "device")
    assert predicted is not None and math.isfinite(predicted)
    assert predicted == pytest.approx(1.0)  # at most 10x


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, "1.0", True])
def test_bad_observed_latency_is_invalid_input(bad: object) -> None:
    m = TaskResourceMatrix({"clip": {"device": 0.1}})
    with pytest.raises(InvalidInputError, match="latency"):
        m.observe("clip", "device", bad)  # type: ignore[arg-type]
    assert m.cell("clip", "device").count == 0


@pytest.mark.parametrize("load", [-0.1, 1.5, math.nan])
def test_bad_load_is_invalid_input(load: float) -> None:
    with pytest.raises(InvalidInputError, match="load of edge"):
        TaskResourceMatrix().set_load("edge", load)


def test_unknown_task_or_tier_is_named() -> None:
    with pytest.raises(ConfigError, match="'video'"):
        TaskResourceMatrix({"video": {"edge": 1.0}})
    with pytest.raises(ConfigError, match="'fog'"):
        TaskResourceMatrix({"clip": {"fog": 1.0}})
    with pytest.raises(ConfigError, match=r"priors\.clip\.edge"):
        TaskResourceMatrix({"clip": {"edge": -1.0}})
    with pytest.raises(InvalidInputError, match="'fog'"):
        TaskResourceMatrix().observe("clip", "fog", 1.0)
    with pytest.raises(ConfigError, match="alpha"):
        TaskResourceMatrix(alpha=0.0)


def test_snapshot_is_plain_json_with_every_cell() -> None:
    m = TaskResourceMatrix({"image_1024": {"edge": 1.2, "cloud": 0.8}})
    m.set_available("cloud", False)
    m.set_load("edge", 0.2)
    snap = json.loads(json.dumps(m.snapshot(), allow_nan=False))
    assert set(snap["tasks"]) == {k.value for k in TaskKind}
    assert all(set(row) == {"device", "edge", "cloud"} for row in snap["tasks"].values())
    row = snap["tasks"]["image_1024"]
    assert row["edge"]["feasible"] is True
    assert row["edge"]["expected_s"] == pytest.approx(1.5)
    assert row["cloud"]["feasible"] is False  # known, but the cloud is down
    assert row["device"] == {"expected_s": None, "prior_s": None, "mean_s": None, "count": 0,
                             "feasible": False}
    assert snap["tiers"]["cloud"] == {"available": False, "load": 0.0}


def test_a_new_prior_carries_what_was_learned_as_a_ratio() -> None:
    m = TaskResourceMatrix({"text_short": {"cloud": 0.010}})
    for _ in range(40):  # observed 50 % slower than the prior: the mean converges on 0.015
        m.observe("text_short", "cloud", 0.015)
    assert m.predict("text_short", "cloud") == pytest.approx(0.015, rel=1e-3)
    m.set_prior("text_short", "cloud", 0.020)  # the link got slower: the planner now predicts 20 ms
    assert m.predict("text_short", "cloud") == pytest.approx(0.030, rel=1e-3)
    assert m.cell("text_short", "cloud").count == 40
    fresh = m.set_prior("text_short", "edge", 0.005)  # never observed: the prior is the mean
    assert fresh.mean_s == 0.005 and m.predict("text_short", "edge") == 0.005
    with pytest.raises(InvalidInputError, match="prior"):
        m.set_prior("text_short", "edge", -1.0)
