"""Follow-ups to a context's last picture (engine/image_contexts.py), without a deployment."""

from __future__ import annotations

import numpy as np

from tierflow.engine.image_contexts import LastImage, keep_unchanged, next_level, plan_follow_up
from tierflow.model.scenes import parse_prompt, render
from tierflow.runtime.image_result import png_bytes


def test_what_did_not_change_is_the_last_pictures_own_pixels() -> None:
    last = render(parse_prompt("a red car on a road").scene, 256, seed=4).image
    made = last.copy()
    made[100:140, 60:120] = (20, 40, 220)  # the only part that changed
    noise = np.random.default_rng(0).integers(-8, 9, made.shape)  # and noise under CHANGE_LEVEL everywhere
    made = np.clip(made.astype(int) + noise, 0, 255).astype(np.uint8)
    kept, share = keep_unchanged(last, made)
    inside = np.abs(kept[100:140, 60:120].astype(int) - made[100:140, 60:120]).max()
    assert inside <= 6  # the change is taken (its rim within the feather's last few percent)
    far = np.ones((256, 256), bool)
    far[80:160, 40:140] = False
    np.testing.assert_array_equal(kept[far], last[far])  # small noise elsewhere: the last picture, exactly
    assert (40 * 60) / 256**2 < share < 0.2


def test_a_plan_keeps_the_seed_and_picks_the_size() -> None:
    picture = png_bytes(render(parse_prompt("a red car on a road").scene, 256, seed=4).image)
    last = LastImage("a red car on a road", 9, 256, picture, reproducible=True)
    blue = plan_follow_up(last, "make it blue", None)
    assert (blue.prompt, blue.seed, blue.resolution, blue.edit) == ("a blue car on a road", 9, 256, None)
    assert plan_follow_up(last, "higher resolution", None).resolution == 512
    assert plan_follow_up(last, "higher resolution", 2048).resolution == 2048  # a size said wins
    assert next_level(2048) == 2048
    uploaded = LastImage("a red car on a road", 9, 256, picture, reproducible=False)
    edit = plan_follow_up(uploaded, "make it blue", None).edit
    assert edit is not None and edit.mask is None and np.array_equal(edit.image, last.pixels)
