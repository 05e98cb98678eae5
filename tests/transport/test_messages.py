"""A message's meta: a flat map of string keys to str/int/float/bool, checked when sealed and opened."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tierflow.errors import InvalidInputError
from tierflow.transport.messages import check_meta


def test_meta_of_the_plain_types_and_their_subclasses_passes_unchanged() -> None:
    meta = {"context": "ctx_x", "past_len": 57, "compute_s.edge": 0.0012, "greedy": True,
            "elapsed_s.cloud": np.float64(0.5)}
    assert check_meta(meta) is meta
    assert meta["elapsed_s.cloud"] == 0.5


@pytest.mark.parametrize(
    ("meta", "says"),
    [
        ({1: "x"}, "meta keys must be strings"),
        ({"spans": [1, 2]}, "meta value for 'spans' must be str, int, float or bool, not list"),
        ({"x": None}, "not NoneType"),
        ({"x": np.int64(3)}, "not int64"),  # numpy's integers are not ints: the wire's JSON would refuse them
        ({"x": math.inf}, "meta value for 'x' must be finite"),
        ({"x": np.float64("nan")}, "meta value for 'x' must be finite"),
        ({"ok": 1, "bad": {"nested": 1}}, "meta value for 'bad'"),
    ],
)
def test_meta_that_cannot_travel_is_refused_naming_the_key(meta: dict, says: str) -> None:
    with pytest.raises(InvalidInputError, match=says.replace("(", r"\(").replace("[", r"\[")):
        check_meta(meta)
