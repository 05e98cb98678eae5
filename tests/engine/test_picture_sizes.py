"""The bytes a picture or a clip will take on the link, learned per tier (engine/picture_sizes.py)."""

from __future__ import annotations

import pytest

from tierflow.engine.picture_sizes import GIF_BYTES_PER_PIXEL, PictureSizes, image_bytes
from tierflow.types import Tier


def test_a_tier_not_seen_gets_the_prior_and_a_seen_level_its_own_bytes() -> None:
    sizes = PictureSizes()
    assert sizes.expect(Tier.CLOUD, 512) == image_bytes(512)
    sizes.observe(Tier.CLOUD, 512, 490_000)  # random weights: noise, far above the prior's 175 kB
    assert sizes.expect(Tier.CLOUD, 512) == 490_000
    assert sizes.expect(Tier.EDGE, 512) == image_bytes(512)  # each tier its own


def test_the_moving_average_follows_what_the_tier_sends() -> None:
    sizes = PictureSizes(alpha=0.3)
    sizes.observe(Tier.EDGE, 256, 100_000)
    sizes.observe(Tier.EDGE, 256, 200_000)
    assert sizes.expect(Tier.EDGE, 256) == 130_000


def test_a_level_not_seen_is_scaled_from_the_nearest_one_seen() -> None:
    sizes = PictureSizes()
    sizes.observe(Tier.EDGE, 256, 100_000)
    assert sizes.expect(Tier.EDGE, 1024) == 1_600_000  # upward by the area
    sizes.observe(Tier.EDGE, 2048, 6_400_000)
    assert sizes.expect(Tier.EDGE, 1024) == pytest.approx(6_400_000 / 2**1.5, abs=1)  # 2048 is nearer


def test_of_two_levels_as_near_the_larger_guess_wins() -> None:
    sizes = PictureSizes()
    sizes.observe(Tier.CLOUD, 256, 100_000)  # 512 from here: 400 kB
    sizes.observe(Tier.CLOUD, 1024, 1_200_000)  # 512 from here: 424 kB
    assert sizes.expect(Tier.CLOUD, 512) == pytest.approx(1_200_000 / 2**1.5, abs=1)
    sizes.observe(Tier.CLOUD, 1024, 700_000)  # 1024 now averages 1.05 MB, 371 kB at 512: 256 wins
    assert sizes.expect(Tier.CLOUD, 512) == 400_000


def test_a_clip_is_learned_in_bytes_per_pixel_of_each_frame() -> None:
    sizes = PictureSizes()
    assert sizes.expect_clip(Tier.EDGE, 16, 256) == int(16 * 256 * 256 * GIF_BYTES_PER_PIXEL)
    sizes.observe_clip(Tier.EDGE, 8, 256, 8 * 256 * 256 * 2)  # noise: 2 bytes a pixel
    assert sizes.expect_clip(Tier.EDGE, 16, 512) == 16 * 512 * 512 * 2
    assert sizes.expect_clip(Tier.CLOUD, 16, 512) == int(16 * 512 * 512 * GIF_BYTES_PER_PIXEL)
