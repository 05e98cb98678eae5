"""Procedural scenes, rendering a scene: :func:`render` (background, objects back to front, the
crack) with its labels and boxes, and :func:`downsample`. The geometry rules are in the
package's docstring (:mod:`tierflow.model.scenes`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from tierflow.errors import InvalidInputError
from tierflow.model.scenes.backgrounds import FLOOR_Y, GROUND_Y, _draw_background
from tierflow.model.scenes.canvas import _Canvas, _Noise
from tierflow.model.scenes.cracks import _draw_crack
from tierflow.model.scenes.grammar import (
    EXTENT,
    PLAIN_WALLS,
    POSITION_X,
    FloatArray,
    Kind,
    Lighting,
    RenderedScene,
    Scene,
)
from tierflow.model.scenes.objects import (
    _draw_ball,
    _draw_box,
    _draw_car,
    _draw_cone,
    _draw_pipe,
    _draw_truck,
    _draw_van,
    _draw_wall,
    _Obj,
)

_DRAW: dict[Kind, Callable[[_Obj], object]] = {
    Kind.CAR: _draw_car,
    Kind.VAN: _draw_van,
    Kind.TRUCK: _draw_truck,
    Kind.BALL: _draw_ball,
    Kind.BOX: _draw_box,
    Kind.CONE: _draw_cone,
    Kind.PIPE: _draw_pipe,
    Kind.WALL: _draw_wall,
}

#: half the object's width in units of its extent (for keeping it inside the frame)
_HALF_WIDTH = {Kind.BALL: 0.5, Kind.BOX: 0.5, Kind.CONE: 0.36, Kind.PIPE: 0.5, Kind.WALL: 0.53}
MIN_RESOLUTION, MAX_RESOLUTION = 16, 4096


def render(scene: Scene, resolution: int, seed: int = 0) -> RenderedScene:
    """Draw ``scene`` at ``resolution`` x ``resolution`` px; deterministic for ``(scene, seed)``
    and the same geometry at every resolution (see the module's docstring)."""
    if not isinstance(scene, Scene):
        raise InvalidInputError(f"render takes a Scene, not {type(scene).__name__}")
    if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
        raise InvalidInputError(f"resolution must be an integer, not {resolution!r}")
    res = int(resolution)
    if not MIN_RESOLUTION <= res <= MAX_RESOLUTION:
        raise InvalidInputError(f"resolution must be {MIN_RESOLUTION}..{MAX_RESOLUTION} px, not {res}")
    seed = int(seed)
    if seed < 0:
        raise InvalidInputError(f"seed must be >= 0, not {seed}")
    cv = _Canvas(res, scene.lighting is Lighting.NIGHT)
    noise = _Noise(seed)
    _draw_background(cv, scene, noise, np.random.default_rng([seed, 1]))
    indoor = scene.background in PLAIN_WALLS
    base_y = FLOOR_Y if indoor else GROUND_Y
    for index in reversed(range(len(scene.objects))):  # the first object ends up in front
        spec = scene.objects[index]
        rng = np.random.default_rng([seed, 2, index])
        s = EXTENT[spec.kind][spec.size]
        half = _HALF_WIDTH.get(spec.kind, 0.52) * s
        cx = POSITION_X[spec.position] + float(rng.uniform(-0.03, 0.03))
        cx = min(max(cx, half + 0.01), 1.0 - half - 0.01)
        base = base_y + float(rng.uniform(-0.012, 0.012))
        facing = 1.0 if rng.random() < 0.5 else -1.0
        ob = _Obj(
            cv,
            noise,
            rng,
            index + 1,
            spec.kind,
            spec.colour,
            cx,
            base,
            s,
            facing,
            paint_gain=float(rng.uniform(0.96, 1.04)),
        )
        surface = _DRAW[spec.kind](ob)
        if scene.crack and index == scene.cracked_index:
            assert isinstance(surface, tuple)
            _draw_crack(cv, ob, surface, np.random.default_rng([seed, 3, index]))
    image = (np.clip(cv.rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return RenderedScene(scene, seed, image, cv.crack, cv.ids, cv.paint, _boxes(cv.ids, len(scene.objects)))


def _boxes(ids: npt.NDArray[np.uint8], n: int) -> tuple[tuple[float, float, float, float], ...]:
    """Each object's visible bounding box (normalised; all zeros when it is hidden)."""
    res = ids.shape[0]
    out: list[tuple[float, float, float, float]] = []
    for k in range(1, n + 1):
        present = ids == k
        rows = np.flatnonzero(present.any(axis=1))
        if rows.size == 0:
            out.append((0.0, 0.0, 0.0, 0.0))
            continue
        cols = np.flatnonzero(present[rows[0] : rows[-1] + 1].any(axis=0))
        out.append((cols[0] / res, rows[0] / res, (cols[-1] + 1) / res, (rows[-1] + 1) / res))
    return tuple(out)


def downsample(image: npt.NDArray[np.generic], factor: int) -> FloatArray:
    """Box-filter an [H, W, ...] image by an integer ``factor`` (float32 out)."""
    if factor < 1 or image.shape[0] % factor or image.shape[1] % factor:
        raise InvalidInputError(f"cannot box-filter {image.shape[:2]} by {factor}")
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image.astype(np.float32).reshape(h, factor, w, factor, *image.shape[2:])
    return blocks.mean(axis=(1, 3))  # type: ignore[no-any-return]
