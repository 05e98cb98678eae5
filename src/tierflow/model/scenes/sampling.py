"""Procedural scenes, sampling: :func:`random_scene` draws a scene from the grammar."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from tierflow.errors import InvalidInputError
from tierflow.model.scenes.grammar import (
    BACKGROUNDS_OF,
    CRACKABLE,
    MAX_OBJECTS,
    Background,
    Colour,
    Kind,
    Lighting,
    Position,
    Scene,
    SceneObject,
    Size,
)


def random_scene(
    rng: np.random.Generator,
    *,
    max_objects: int = MAX_OBJECTS,
    kinds: Iterable[Kind] | None = None,
    backgrounds: Iterable[Background] | None = None,
    night_probability: float = 0.5,
    crack_probability: float = 0.5,
) -> Scene:
    """A scene drawn from the grammar: the main kind from ``kinds``, a background it is sampled
    on (within ``backgrounds``), 1..``max_objects`` objects at distinct positions, uniform colours
    and sizes, a crack with ``crack_probability`` when a pipe or wall is present."""
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise InvalidInputError(f"max_objects must be 1..{MAX_OBJECTS}, not {max_objects}")
    pool = list(Kind) if kinds is None else [Kind(k) for k in kinds]
    allowed_bg = set(Background) if backgrounds is None else {Background(b) for b in backgrounds}
    pool = [k for k in pool if allowed_bg.intersection(BACKGROUNDS_OF[k])]
    if not pool:
        raise InvalidInputError("no kind is sampled on the backgrounds given")
    main = pool[int(rng.integers(len(pool)))]
    bgs = [b for b in BACKGROUNDS_OF[main] if b in allowed_bg]
    background = bgs[int(rng.integers(len(bgs)))]
    n = int(rng.integers(1, max_objects + 1))
    others = [k for k in pool if background in BACKGROUNDS_OF[k]]
    chosen = [main] + [others[int(rng.integers(len(others)))] for _ in range(n - 1)]
    slots = list(Position)
    order = rng.permutation(len(slots))[:n]
    colours, sizes = list(Colour), list(Size)
    objects = tuple(
        SceneObject(
            kind,
            colours[int(rng.integers(len(colours)))],
            sizes[int(rng.integers(len(sizes)))],
            slots[int(order[i])],
        )
        for i, kind in enumerate(chosen)
    )
    lighting = Lighting.NIGHT if rng.random() < night_probability else Lighting.DAY
    crack = bool(any(ob.kind in CRACKABLE for ob in objects) and rng.random() < crack_probability)
    return Scene(objects, background, lighting, crack)
