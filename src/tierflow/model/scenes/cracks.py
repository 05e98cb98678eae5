"""Procedural scenes, cracks: branching crack paths refined by midpoint displacement, drawn on
a pipe or a wall at the refinement level the resolution resolves."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tierflow.model.scenes.canvas import _Canvas, _dist_segment, _Region, _sd_box
from tierflow.model.scenes.grammar import RGB, FloatArray
from tierflow.model.scenes.objects import _Obj

_CRACK_STEP = 0.018  # coarse segment length (normalised)
_CRACK_LEVELS = 3  # midpoint refinements


@dataclass(frozen=True)
class _CrackPath:
    levels: tuple[FloatArray, ...]  # [n_k, 2] points at each refinement level
    w0: float  # width at the start (normalised)
    w1: float  # width at the end


def _crack_paths(rng: np.random.Generator, rect: tuple[float, float, float, float]) -> list[_CrackPath]:
    """A branching crack across ``rect``: a trunk from one edge towards the other, side branches
    (and their branches), each refined by midpoint displacement for detail at high resolution."""
    x0, y0, x1, y1 = rect
    w, h = x1 - x0, y1 - y0
    if rng.random() < (0.25 if w > 1.6 * h else 0.5):  # from the top edge down to the bottom half
        start = (x0 + w * rng.uniform(0.25, 0.75), y0)
        target = (x0 + w * rng.uniform(0.2, 0.8), y1 - h * rng.uniform(0.0, 0.4))
    else:  # from a side edge across
        left = rng.random() < 0.5
        start = (x0 if left else x1, y0 + h * rng.uniform(0.2, 0.8))
        target = (
            x1 - w * rng.uniform(0.0, 0.3) if left else x0 + w * rng.uniform(0.0, 0.3),
            y0 + h * rng.uniform(0.2, 0.8),
        )
    heading = math.atan2(target[1] - start[1], target[0] - start[0])
    length = math.hypot(target[0] - start[0], target[1] - start[1])
    paths: list[_CrackPath] = []

    def inside(p: tuple[float, float]) -> bool:
        return x0 - 0.01 <= p[0] <= x1 + 0.01 and y0 - 0.01 <= p[1] <= y1 + 0.01

    def walk(p: tuple[float, float], heading: float, steps: int, width: float, depth: int) -> None:
        pts = [p]
        main = heading
        for _ in range(steps):
            heading += rng.normal(0, 0.38) + 0.25 * (main - heading)
            p = (p[0] + _CRACK_STEP * math.cos(heading), p[1] + _CRACK_STEP * math.sin(heading))
            pts.append(p)
            if not inside(p):
                break
        coarse = np.asarray(pts, np.float32)
        if len(coarse) < 2:
            return
        end_width = width * 0.35
        paths.append(_CrackPath(_refine(rng, coarse), width, end_width))
        if depth == 0:
            return
        for k in range(1, len(coarse) - 1):
            if rng.random() < (0.22 if depth == 2 else 0.15):
                t = k / (len(coarse) - 1)
                side = 1 if rng.random() < 0.5 else -1
                walk(
                    (float(coarse[k, 0]), float(coarse[k, 1])),
                    heading + side * rng.uniform(0.5, 1.1),
                    max(2, int((len(coarse) - k) * rng.uniform(0.3, 0.6))),
                    (width + (end_width - width) * t) * 0.65,
                    depth - 1,
                )

    walk(
        start,
        heading,
        max(4, int(length * rng.uniform(0.9, 1.2) / _CRACK_STEP)),
        rng.uniform(0.012, 0.015),
        2,
    )
    return paths


def _refine(rng: np.random.Generator, coarse: FloatArray) -> tuple[FloatArray, ...]:
    levels = [coarse]
    pts = coarse
    for _ in range(_CRACK_LEVELS):
        seg = pts[1:] - pts[:-1]
        normal = np.stack([-seg[:, 1], seg[:, 0]], axis=1)
        mid = (pts[1:] + pts[:-1]) / 2 + normal * rng.normal(0, 0.22, (len(seg), 1)).astype(np.float32)
        out = np.empty((len(pts) + len(mid), 2), np.float32)
        out[0::2], out[1::2] = pts, mid
        pts = out
        levels.append(pts)
    return tuple(levels)


def _draw_crack(
    cv: _Canvas, ob: _Obj, rect: tuple[float, float, float, float], rng: np.random.Generator
) -> None:
    reg = cv.region(*rect)
    if reg is None:
        return
    x0, y0, x1, y1 = rect
    on_surface = cv.cov(_sd_box(reg, x0, y0, x1, y1))
    step_px = _CRACK_STEP * cv.res
    level = min(max(math.ceil(math.log2(step_px / 5.0)), 0), _CRACK_LEVELS) if step_px > 5 else 0
    shape = (reg.i1 - reg.i0, reg.j1 - reg.j0)
    ink = np.zeros(shape, np.float32)
    touched = np.zeros(shape, np.bool_)
    for path in _crack_paths(rng, rect):
        pts = path.levels[level]
        n = len(pts) - 1
        for k in range(n):
            width = path.w0 + (path.w1 - path.w0) * (k + 0.5) / n
            (ax, ay), (bx, by) = pts[k], pts[k + 1]
            pad = max(width, cv.px) / 2
            sub = cv.region(min(ax, bx) - pad, min(ay, by) - pad, max(ax, bx) + pad, max(ay, by) + pad)
            if sub is None:
                continue
            i0, i1 = max(sub.i0, reg.i0), min(sub.i1, reg.i1)
            j0, j1 = max(sub.j0, reg.j0), min(sub.j1, reg.j1)
            if i0 >= i1 or j0 >= j1:
                continue
            part = _Region(i0, i1, j0, j1, cv.centres[None, j0:j1], cv.centres[i0:i1, None])
            dist = _dist_segment(part, float(ax), float(ay), float(bx), float(by))
            win = (slice(i0 - reg.i0, i1 - reg.i0), slice(j0 - reg.j0, j1 - reg.j0))
            np.maximum(ink[win], cv.line_cov(dist, width), out=ink[win])
            touched[win] |= dist <= max(width / 2, 0.5 * cv.px)
    ink *= on_surface
    r, g, b = RGB[ob.colour]
    dark_paint = 0.3 * r + 0.59 * g + 0.11 * b < 50  # on black paint a crack shows the light substrate
    cv.fill(reg, ink, cv.lit((168, 162, 150) if dark_paint else (26, 22, 20)))
    cv.paint[reg.window][ink > 0.15] = 0
    cv.crack[reg.window] |= touched & (on_surface >= 0.5) & (cv.ids[reg.window] == ob.owner)
