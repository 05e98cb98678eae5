"""Procedural scenes, the canvas: pixel regions in normalised coordinates, the float image and
its label planes, signed-distance primitives, dots and value noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tierflow.model.scenes.grammar import FloatArray


@dataclass(slots=True)
class _Region:
    """A pixel window of the canvas and its pixel centres in normalised units."""

    i0: int
    i1: int
    j0: int
    j1: int
    xs: FloatArray  # [1, w]
    ys: FloatArray  # [h, 1]

    @property
    def window(self) -> tuple[slice, slice]:
        return slice(self.i0, self.i1), slice(self.j0, self.j1)


class _Canvas:
    def __init__(self, res: int, night: bool) -> None:
        self.res = res
        self.px = 1.0 / res
        self.night = night
        self.ambient = np.array([0.30, 0.33, 0.46] if night else [1.0, 1.0, 1.0], np.float32)
        self.rgb = np.zeros((res, res, 3), np.float32)
        self.ids = np.zeros((res, res), np.uint8)
        self.paint = np.zeros((res, res), np.uint8)
        self.crack = np.zeros((res, res), np.bool_)
        self.centres = ((np.arange(res, dtype=np.float32) + 0.5) / res).astype(np.float32)

    def region(self, x0: float, y0: float, x1: float, y1: float) -> _Region | None:
        r, pad = self.res, 1.5 / self.res
        j0, j1 = max(math.floor((x0 - pad) * r), 0), min(math.ceil((x1 + pad) * r), r)
        i0, i1 = max(math.floor((y0 - pad) * r), 0), min(math.ceil((y1 + pad) * r), r)
        if j0 >= j1 or i0 >= i1:
            return None
        return _Region(i0, i1, j0, j1, self.centres[None, j0:j1], self.centres[i0:i1, None])

    def full(self, y0: float = 0.0, y1: float = 1.0) -> _Region:
        reg = self.region(0.0, y0, 1.0, y1)
        assert reg is not None
        return reg

    def lit(self, rgb: Sequence[float], gain: float = 1.0) -> FloatArray:
        """A reflecting colour (0..255) under the scene's light."""
        return np.asarray(rgb, np.float32) * np.float32(gain / 255.0) * self.ambient

    def cov(self, sd: FloatArray) -> FloatArray:
        """Pixel coverage of the inside of a signed distance field (normalised units)."""
        return np.clip(0.5 - sd * np.float32(self.res), 0.0, 1.0)  # type: ignore[no-any-return]

    def line_cov(self, dist: FloatArray, width: float) -> FloatArray:
        """Coverage of a line ``width`` wide at distance ``dist`` from its centre; thinner than a
        pixel, it is drawn a pixel wide at the strength that keeps its ink."""
        eff = max(width, self.px)
        return np.clip((eff / 2 - dist) * np.float32(self.res) + 0.5, 0.0, 1.0) * np.float32(width / eff)  # type: ignore[no-any-return]

    def fill(
        self,
        reg: _Region,
        cov: FloatArray,
        colour: FloatArray,
        owner: int | None = None,
        paint: bool = False,
    ) -> None:
        """Paint ``colour`` ([3] or [h, w, 3]) over ``reg`` with coverage ``cov``; an object
        (``owner`` >= 1) claims the pixels it covers at least half, and marks as its paint (when ``paint``)
        those it covers at least 85 %; a part of another colour takes the paint mark off every
        pixel it covers over 15 %."""
        win = reg.window
        dst = self.rgb[win]
        dst += (colour - dst) * cov[..., None]
        if owner is not None:
            shape = dst.shape[:2]
            solid = np.broadcast_to(cov >= 0.5, shape)
            self.ids[win][solid] = owner
            self.crack[win][solid] = False
            if paint:  # where the paint shows nearly pure
                self.paint[win][np.broadcast_to(cov >= 0.85, shape)] = owner
            else:  # another colour: the paint no longer shows where it covers a little
                self.paint[win][np.broadcast_to(cov > 0.15, shape)] = 0

    def add(self, reg: _Region, amount: FloatArray, colour: FloatArray) -> None:
        """Add light (emissive) over ``reg``."""
        self.rgb[reg.window] += amount[..., None] * colour

    def darken(self, reg: _Region, amount: FloatArray) -> None:
        self.rgb[reg.window] *= (1.0 - amount)[..., None]


def _sd_circle(reg: _Region, cx: float, cy: float, r: float) -> FloatArray:
    return np.sqrt((reg.xs - np.float32(cx)) ** 2 + (reg.ys - np.float32(cy)) ** 2) - np.float32(r)


def _sd_box(reg: _Region, x0: float, y0: float, x1: float, y1: float, r: float = 0.0) -> FloatArray:
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
    qx = np.abs(reg.xs - np.float32(cx)) - np.float32((x1 - x0) / 2 - r)
    qy = np.abs(reg.ys - np.float32(cy)) - np.float32((y1 - y0) / 2 - r)
    outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
    inside = np.minimum(np.maximum(qx, qy), 0.0)
    return outside + inside - np.float32(r)  # type: ignore[no-any-return]


def _sd_convex(reg: _Region, pts: Sequence[tuple[float, float]]) -> FloatArray:
    """Convex polygon: the largest signed distance to its edges' lines (exact inside and on the
    edges, a little small beyond the corners -- enough for coverage)."""
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    out: FloatArray | None = None
    for k, (ax, ay) in enumerate(pts):
        bx, by = pts[(k + 1) % len(pts)]
        ex, ey = bx - ax, by - ay
        norm = math.hypot(ex, ey)
        if norm == 0:
            continue
        nx, ny = ey / norm, -ex / norm
        if nx * (mx - ax) + ny * (my - ay) > 0:
            nx, ny = -nx, -ny
        c = nx * ax + ny * ay
        d = reg.xs * np.float32(nx) + (reg.ys * np.float32(ny) - np.float32(c))
        out = d if out is None else np.maximum(out, d)
    assert out is not None
    return out


def _sd_ellipse(reg: _Region, cx: float, cy: float, a: float, b: float) -> FloatArray:
    """First-order signed distance to an ellipse (f / |grad f|)."""
    dx = (reg.xs - np.float32(cx)) / np.float32(a)
    dy = (reg.ys - np.float32(cy)) / np.float32(b)
    f = dx * dx + dy * dy - 1.0
    grad = 2.0 * np.sqrt((dx / np.float32(a)) ** 2 + (dy / np.float32(b)) ** 2) + 1e-6
    return f / grad


def _dist_segment(reg: _Region, ax: float, ay: float, bx: float, by: float) -> FloatArray:
    px = reg.xs - np.float32(ax)
    py = reg.ys - np.float32(ay)
    ex, ey = bx - ax, by - ay
    length2 = ex * ex + ey * ey
    if length2 == 0:
        return np.sqrt(px * px + py * py)  # type: ignore[no-any-return]
    t = np.clip((px * np.float32(ex) + py * np.float32(ey)) / np.float32(length2), 0.0, 1.0)
    return np.sqrt((px - t * np.float32(ex)) ** 2 + (py - t * np.float32(ey)) ** 2)


def _smoothstep(t: FloatArray) -> FloatArray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class _Noise:
    """Value noise on a hashed integer lattice, defined in normalised coordinates, so a texture
    is the same at every resolution; only the lattice points a region needs are computed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def lattice(self, tag: int, cols: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]) -> FloatArray:
        """Values in [-1, 1] at lattice points ``rows`` x ``cols`` of texture ``tag``."""
        key = np.uint32((self.seed * 0x9E3779B1 + tag * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF)
        h = (cols.astype(np.uint32)[None, :] * np.uint32(0x8DA6B343)) ^ (
            rows.astype(np.uint32)[:, None] * np.uint32(0xD8163841)
        )
        h ^= key
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x2C1B3C6D)
        h ^= h >> np.uint32(12)
        h *= np.uint32(0x297A2D39)
        h ^= h >> np.uint32(15)
        return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0 / (1 << 24)) - np.float32(1.0)

    def sample(self, reg: _Region, tag: int, fx: int, fy: int) -> FloatArray:
        u = reg.xs[0] * np.float32(fx)
        iu = u.astype(np.int64)
        tu = _smoothstep(u - iu)
        v = reg.ys[:, 0] * np.float32(fy)
        iv = v.astype(np.int64)
        tv = _smoothstep(v - iv)[:, None]
        c0, r0 = int(iu[0]), int(iv[0])
        grid = self.lattice(
            tag * 4099 + fx * 31 + fy,
            np.arange(c0, int(iu[-1]) + 2, dtype=np.int64),
            np.arange(r0, int(iv[-1]) + 2, dtype=np.int64),
        )
        iu = iu - c0
        across = grid[:, iu] * (1.0 - tu) + grid[:, iu + 1] * tu
        iv = iv - r0
        return across[iv] * (1.0 - tv) + across[iv + 1] * tv

    def fbm(
        self, res: int, reg: _Region, tag: int, base: int, octaves: int, aspect: int = 1, aspect_y: int = 1
    ) -> FloatArray:
        """Sum of octaves (amplitude halving, frequency doubling) from ``base`` cells per unit;
        ``aspect`` multiplies the x frequency, ``aspect_y`` the y one.

        An octave fades out as its cells shrink from 3 px to 1 px, about what the pixel's box
        filter leaves of it, so a render stays close to a box-filtered render at a higher
        resolution. (Averaging 2 x 2 samples per pixel for the fine octaves halves the
        difference again, and doubles the time of a 64 px render.)"""
        total: FloatArray | None = None
        amp = 1.0
        for k in range(octaves):
            f = base << k
            fx, fy = f * aspect, f * aspect_y
            weight = min(max((res / max(fx, fy) - 1.0) / 2.0, 0.0), 1.0)
            if weight == 0:
                break
            n = self.sample(reg, tag * 16 + k, fx, fy) * np.float32(amp * weight)
            total = n if total is None else total + n
            amp *= 0.5
        if total is None:
            return np.zeros((reg.i1 - reg.i0, reg.j1 - reg.j0), np.float32)
        return total


def _dot(cv: _Canvas, cx: float, cy: float, r: float, colour: FloatArray, strength: float = 1.0) -> None:
    """A disc that keeps its ink when smaller than a pixel; skipped when too small to matter."""
    eff = max(r, 0.6 * cv.px)
    gain = strength * (r / eff) ** 2
    if gain < 0.04:
        return
    reg = cv.region(cx - eff, cy - eff, cx + eff, cy + eff)
    if reg is not None:
        cv.fill(reg, cv.cov(_sd_circle(reg, cx, cy, eff)) * np.float32(gain), colour)
