"""The one rule for synthetic inputs: shapes of symbolic dims, and seeded values per dtype."""

from __future__ import annotations

import numpy as np
import pytest

from tierflow.errors import InvalidInputError
from tierflow.model.feeds import (
    BATCH_DEFAULT,
    DIM_DEFAULT,
    INT_HIGH,
    random_array,
    random_feeds,
    resolve_shape,
)


def test_symbolic_dims_take_given_sizes_then_the_defaults() -> None:
    assert resolve_shape([3, "batch", "seq", None]) == (3, BATCH_DEFAULT, DIM_DEFAULT, DIM_DEFAULT)
    # an unnamed first axis is a batch
    assert resolve_shape([None, "unk__7", 2]) == (BATCH_DEFAULT, DIM_DEFAULT, 2)
    assert resolve_shape(["N", "seq"], {"seq": 5, "N": 2}) == (2, 5)
    assert resolve_shape([-1, 0], {}) == (BATCH_DEFAULT, 0)  # a negative size is unknown, 0 is a size


def test_values_by_dtype_are_seeded_and_bounded() -> None:
    specs = [
        ("x", np.float32, (4, 8)), ("ids", np.int64, (200,)), ("u", np.uint8, (200,)), ("m", np.bool_, (50,)),
    ]
    feeds = random_feeds(specs, seed=3)
    assert list(feeds) == ["x", "ids", "u", "m"]
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (4, 8)
    for name in ("ids", "u"):
        assert feeds[name].min() >= 0 and feeds[name].max() < INT_HIGH
        assert len(np.unique(feeds[name])) > 2  # the whole range, not only 0 / 1
    assert feeds["m"].dtype == np.bool_ and 0 < feeds["m"].sum() < 50
    again = random_feeds(specs, seed=3)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    assert not np.array_equal(random_feeds(specs, seed=4)["x"], feeds["x"])


def test_a_dtype_without_a_rule_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="cannot generate"):
        random_array(np.random.default_rng(0), np.dtype("U4"), (2,))
