"""Procedural scenes, the objects: :class:`_Obj` (an object's local coordinates and its drawing
helpers) and the drawing of each kind (car, van, truck, ball, box, cone, pipe, wall)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tierflow.model.scenes.canvas import (
    _Canvas,
    _dist_segment,
    _dot,
    _Noise,
    _Region,
    _sd_box,
    _sd_circle,
    _sd_convex,
    _sd_ellipse,
    _smoothstep,
)
from tierflow.model.scenes.grammar import RGB, Colour, FloatArray, Kind

Shade = Callable[[_Region], FloatArray]  # a brightness factor over a region ([h, w] or [h, 1])


@dataclass
class _Obj:
    """One object being drawn: local coordinates (u along its length, front positive; v up from
    where it stands), both in units of its extent ``s``, mapped to normalised image coordinates."""

    cv: _Canvas
    noise: _Noise
    rng: np.random.Generator
    owner: int
    kind: Kind
    colour: Colour
    cx: float
    base: float
    s: float
    facing: float
    paint_gain: float = 1.0

    def X(self, u: float) -> float:  # a local u to image x
        return self.cx + self.facing * u * self.s

    def Y(self, v: float) -> float:  # a local v to image y
        return self.base - v * self.s

    def rect(self, u0: float, v0: float, u1: float, v1: float) -> tuple[float, float, float, float]:
        xa, xb = sorted((self.X(u0), self.X(u1)))
        return xa, self.Y(v1), xb, self.Y(v0)

    def region(self, u0: float, v0: float, u1: float, v1: float) -> _Region | None:
        return self.cv.region(*self.rect(u0, v0, u1, v1))

    def paint_rgb(self, gain: float = 1.0) -> FloatArray:
        return self.cv.lit(RGB[self.colour], gain * self.paint_gain)

    def put(
        self,
        reg: _Region | None,
        sd: FloatArray,
        colour: FloatArray,
        paint: bool = False,
        shade: Shade | None = None,
        part: bool = True,
    ) -> FloatArray | None:
        if reg is None:
            return None
        cov = self.cv.cov(sd)
        if shade is not None:
            colour = colour[None, None, :] * shade(reg)[..., None]
        self.cv.fill(reg, cov, colour, self.owner if part else None, paint)
        return cov

    def box(
        self,
        u0: float,
        v0: float,
        u1: float,
        v1: float,
        colour: FloatArray,
        r: float = 0.0,
        paint: bool = False,
        shade: Shade | None = None,
    ) -> FloatArray | None:
        x0, y0, x1, y1 = self.rect(u0, v0, u1, v1)
        reg = self.cv.region(x0, y0, x1, y1)
        if reg is None:
            return None
        return self.put(reg, _sd_box(reg, x0, y0, x1, y1, r * self.s), colour, paint, shade)

    def poly(
        self,
        pts: Sequence[tuple[float, float]],
        colour: FloatArray,
        paint: bool = False,
        shade: Shade | None = None,
    ) -> FloatArray | None:
        mapped = [(self.X(u), self.Y(v)) for u, v in pts]
        xs, ys = [p[0] for p in mapped], [p[1] for p in mapped]
        reg = self.cv.region(min(xs), min(ys), max(xs), max(ys))
        if reg is None:
            return None
        return self.put(reg, _sd_convex(reg, mapped), colour, paint, shade)

    def circle(
        self,
        u: float,
        v: float,
        r: float,
        colour: FloatArray,
        paint: bool = False,
        shade: Shade | None = None,
    ) -> FloatArray | None:
        x, y, rr = self.X(u), self.Y(v), r * self.s
        reg = self.cv.region(x - rr, y - rr, x + rr, y + rr)
        if reg is None:
            return None
        return self.put(reg, _sd_circle(reg, x, y, rr), colour, paint, shade)

    def line(self, u0: float, v0: float, u1: float, v1: float, width: float, colour: FloatArray) -> None:
        """A thin line (``width`` in local units), part of the object but not its paint."""
        ax, ay, bx, by = self.X(u0), self.Y(v0), self.X(u1), self.Y(v1)
        w = width * self.s
        pad = max(w, self.cv.px)
        reg = self.cv.region(min(ax, bx) - pad, min(ay, by) - pad, max(ax, bx) + pad, max(ay, by) + pad)
        if reg is None:
            return
        cov = self.cv.line_cov(_dist_segment(reg, ax, ay, bx, by), w)
        self.cv.fill(reg, cov, colour)

    def dot(self, u: float, v: float, r: float, colour: FloatArray) -> None:
        _dot(self.cv, self.X(u), self.Y(v), r * self.s, colour)

    def grain(self, amount: float = 0.035, tag: int = 0) -> Shade:
        """A brightness factor with fine surface noise (paint texture)."""
        res, noise, seed_tag = self.cv.res, self.noise, 100 + self.owner * 8 + tag
        return lambda reg: 1.0 + np.float32(amount) * noise.fbm(res, reg, seed_tag, 24, 4)

    def vertical(
        self, v_top: float, v_bottom: float, top: float, bottom: float, amount: float = 0.035, tag: int = 0
    ) -> Shade:
        """Brightness from ``top`` at ``v_top`` to ``bottom`` at ``v_bottom``, with grain."""
        y0, y1 = self.Y(v_top), self.Y(v_bottom)
        grain = self.grain(amount, tag)

        def shade(reg: _Region) -> FloatArray:
            t = np.clip((reg.ys - np.float32(y0)) / np.float32(y1 - y0), 0.0, 1.0)
            return (np.float32(top) + np.float32(bottom - top) * t) * grain(reg)  # type: ignore[no-any-return]

        return shade

    def shadow(self, half_width: float, strength: float = 0.45) -> None:
        """A soft contact shadow on the ground (not part of the object)."""
        cx, cy = self.cx, self.base + 0.004
        a, b = half_width * self.s, 0.018 + 0.03 * self.s
        reg = self.cv.region(cx - a, cy - b, cx + a, cy + b)
        if reg is None:
            return
        rho = np.sqrt(
            ((reg.xs - np.float32(cx)) / np.float32(a)) ** 2
            + ((reg.ys - np.float32(cy)) / np.float32(b)) ** 2
        )
        amount = (1.0 - _smoothstep((rho - 0.55) / 0.45)) * np.float32(
            strength * (0.6 if self.cv.night else 1.0)
        )
        self.cv.darken(reg, amount)

    def glow(
        self,
        u: float,
        v: float,
        length: float,
        height: float,
        strength: float,
        rgb: Sequence[float],
        forward: bool = True,
    ) -> None:
        """Emitted light: a soft lobe from (u, v), ``forward`` along the facing (or round it)."""
        ua, ub = (u, u + length) if forward else (u - length, u + length)
        reg = self.region(ua, v - 3 * height, ub, v + 3 * height)
        if reg is None:
            return
        x0, y0 = self.X(u), self.Y(v)
        du = (reg.xs - np.float32(x0)) * np.float32(self.facing / (length * self.s))
        dv = (reg.ys - np.float32(y0)) / np.float32(height * self.s)
        if forward:
            spread = 1.0 + 2.5 * np.clip(du, 0.0, 1.0)
            along = np.clip(1.0 - du, 0.0, 1.0) ** 2 * np.clip(du * 20.0 + 1.0, 0.0, 1.0)
        else:
            spread = np.ones_like(du)
            along = np.clip(1.0 - np.abs(du), 0.0, 1.0) ** 2
        lobe = along * np.exp(-((dv / spread) ** 2) * 3.0)
        self.cv.add(reg, (lobe * np.float32(strength)).astype(np.float32), np.asarray(rgb, np.float32))


_TYRE = (22, 22, 24)
_ARCH = (34, 34, 36)
_HUB = (176, 178, 182)
_TRIM = (58, 58, 62)


def _glass(ob: _Obj) -> tuple[FloatArray, Shade | None]:
    if ob.cv.night:
        return ob.cv.lit((40, 48, 62)), None
    return ob.cv.lit((150, 186, 214)), ob.grain(0.06, tag=5)


def _wheel(ob: _Obj, u: float, v: float, r: float) -> None:
    cv = ob.cv
    ob.circle(u, v, r, cv.lit(_TYRE))
    hub = r * 0.56
    ob.circle(u, v, hub, cv.lit(_HUB), shade=ob.vertical(v + hub, v - hub, 1.1, 0.8, 0.02, tag=6))
    ob.circle(u, v, hub * 0.28, cv.lit((92, 92, 96)))
    phase = float(ob.rng.uniform(0, 2 * math.pi))
    for k in range(5):
        a = phase + k * 2 * math.pi / 5
        ob.dot(
            u + math.cos(a) * hub * 0.62, v + math.sin(a) * hub * 0.62, hub * 0.13, cv.lit((105, 105, 110))
        )


def _arch(ob: _Obj, u: float, v: float, r: float, v_cut: float) -> None:
    """A wheel arch: a dark disc cut off below the body's bottom edge ``v_cut``."""
    x, y, rr = ob.X(u), ob.Y(v), r * ob.s
    reg = ob.cv.region(x - rr, y - rr, x + rr, y + rr)
    if reg is None:
        return
    sd = np.maximum(_sd_circle(reg, x, y, rr), reg.ys - np.float32(ob.Y(v_cut)))
    ob.put(reg, sd, ob.cv.lit(_ARCH))


def _lights(
    ob: _Obj, front: tuple[float, float, float, float], rear: tuple[float, float, float, float]
) -> None:
    cv = ob.cv
    head = cv.lit((245, 240, 205)) if not cv.night else np.array([1.0, 0.97, 0.85], np.float32)
    tail = cv.lit((196, 26, 26)) if not cv.night else np.array([1.0, 0.2, 0.15], np.float32)
    ob.box(*front, head, r=0.006)
    ob.box(*rear, tail, r=0.006)
    if cv.night:
        hv = (front[1] + front[3]) / 2
        ob.glow(front[2], hv, 1.6, 0.16, 0.55, (1.0, 0.92, 0.7))
        ob.glow(front[2], hv, 0.08, 0.08, 0.8, (1.0, 0.95, 0.8), forward=False)
        ob.glow(rear[0], (rear[1] + rear[3]) / 2, 0.07, 0.07, 0.5, (1.0, 0.15, 0.1), forward=False)


def _draw_car(ob: _Obj) -> None:
    cv = ob.cv
    paint = ob.paint_rgb()
    ob.shadow(0.56)
    ob.box(-0.5, 0.07, 0.5, 0.28, paint, r=0.07, paint=True, shade=ob.vertical(0.28, 0.07, 1.1, 0.94))
    cabin = [(-0.33, 0.26), (0.24, 0.26), (0.09, 0.45), (-0.21, 0.45)]
    ob.poly(cabin, paint, paint=True, shade=ob.vertical(0.45, 0.26, 1.1, 1.0))
    glass, glass_shade = _glass(ob)
    ob.poly([(-0.29, 0.28), (-0.065, 0.28), (-0.065, 0.42), (-0.185, 0.42)], glass, shade=glass_shade)
    ob.poly([(-0.035, 0.28), (0.195, 0.28), (0.075, 0.42), (-0.035, 0.42)], glass, shade=glass_shade)
    ob.line(-0.46, 0.255, 0.44, 0.255, 0.008, ob.paint_rgb(1.25))
    seam = ob.paint_rgb(0.55)
    ob.line(-0.05, 0.09, -0.05, 0.265, 0.006, seam)
    ob.line(0.21, 0.1, 0.21, 0.26, 0.006, seam)
    ob.box(0.0, 0.225, 0.05, 0.24, cv.lit(_TRIM))
    ob.box(-0.27, 0.225, -0.22, 0.24, cv.lit(_TRIM))
    ob.box(0.44, 0.07, 0.52, 0.115, cv.lit(_TRIM), r=0.02)
    ob.box(-0.52, 0.07, -0.44, 0.115, cv.lit(_TRIM), r=0.02)
    _lights(ob, (0.47, 0.19, 0.505, 0.225), (-0.505, 0.185, -0.475, 0.235))
    for u in (-0.31, 0.31):
        _arch(ob, u, 0.1, 0.125, 0.07)
        _wheel(ob, u, 0.1, 0.098)


def _draw_van(ob: _Obj) -> None:
    cv = ob.cv
    paint = ob.paint_rgb()
    ob.shadow(0.56)
    body = [(-0.5, 0.07), (0.5, 0.07), (0.5, 0.3), (0.33, 0.55), (-0.47, 0.58), (-0.5, 0.55)]
    ob.poly(body, paint, paint=True, shade=ob.vertical(0.58, 0.07, 1.1, 0.94))
    glass, glass_shade = _glass(ob)
    ob.poly([(0.2, 0.33), (0.44, 0.33), (0.3, 0.51), (0.2, 0.51)], glass, shade=glass_shade)
    ob.box(-0.44, 0.36, -0.2, 0.5, glass, r=0.015, shade=glass_shade)
    ob.box(-0.16, 0.36, 0.15, 0.5, glass, r=0.015, shade=glass_shade)
    seam = ob.paint_rgb(0.55)
    ob.line(0.18, 0.09, 0.18, 0.54, 0.006, seam)
    ob.line(-0.18, 0.09, -0.18, 0.54, 0.006, seam)
    ob.line(-0.48, 0.33, 0.46, 0.33, 0.006, ob.paint_rgb(1.2))
    ob.box(0.1, 0.28, 0.15, 0.295, cv.lit(_TRIM))
    ob.box(0.44, 0.07, 0.52, 0.12, cv.lit(_TRIM), r=0.02)
    ob.box(-0.52, 0.07, -0.45, 0.12, cv.lit(_TRIM), r=0.02)
    _lights(ob, (0.47, 0.21, 0.505, 0.255), (-0.505, 0.2, -0.475, 0.3))
    for u in (-0.32, 0.32):
        _arch(ob, u, 0.1, 0.125, 0.07)
        _wheel(ob, u, 0.1, 0.098)


def _draw_truck(ob: _Obj) -> None:
    cv = ob.cv
    paint = ob.paint_rgb()
    ob.shadow(0.56)
    ob.box(-0.5, 0.07, 0.5, 0.135, cv.lit((42, 42, 46)))
    ob.box(-0.5, 0.12, 0.17, 0.62, paint, r=0.01, paint=True, shade=ob.vertical(0.62, 0.12, 1.08, 0.96))
    rib = ob.paint_rgb(0.8)
    for k in range(1, 8):
        u = -0.5 + k * 0.67 / 8
        ob.line(u, 0.14, u, 0.6, 0.005, rib)
    ob.line(-0.49, 0.6, 0.16, 0.6, 0.006, ob.paint_rgb(1.2))
    cab = [(0.2, 0.1), (0.5, 0.1), (0.5, 0.33), (0.44, 0.5), (0.2, 0.5)]
    ob.poly(cab, paint, paint=True, shade=ob.vertical(0.5, 0.1, 1.06, 0.94, tag=1))
    glass, glass_shade = _glass(ob)
    ob.poly([(0.31, 0.34), (0.465, 0.34), (0.425, 0.465), (0.31, 0.465)], glass, shade=glass_shade)
    ob.line(0.29, 0.13, 0.29, 0.48, 0.005, ob.paint_rgb(0.55))
    ob.box(0.485, 0.13, 0.505, 0.3, cv.lit(_TRIM))
    ob.box(0.16, 0.14, 0.2, 0.3, cv.lit(_TRIM))
    _lights(ob, (0.475, 0.14, 0.505, 0.185), (-0.505, 0.14, -0.48, 0.2))
    for u in (-0.38, -0.22, 0.36):
        _wheel(ob, u, 0.075, 0.075)


def _draw_ball(ob: _Obj) -> None:
    cv = ob.cv
    ob.shadow(0.45)
    cx, cy, r = ob.X(0.0), ob.Y(0.5), 0.5 * ob.s
    reg = cv.region(cx - r, cy - r, cx + r, cy + r)
    if reg is None:
        return
    dx = (reg.xs - np.float32(cx)) / np.float32(r)
    dy = (reg.ys - np.float32(cy)) / np.float32(r)
    nz = np.sqrt(np.clip(1.0 - dx * dx - dy * dy, 0.0, 1.0))
    lambert = np.clip(-0.35 * dx - 0.45 * dy + 0.82 * nz, 0.0, 1.0)
    shade = 0.62 + 0.68 * lambert
    spec = np.clip((lambert - 0.93) / 0.07, 0.0, 1.0) ** 2 * np.float32(0.0 if cv.night else 0.5)
    paint = ob.paint_rgb()
    colour = paint[None, None, :] * shade[..., None] + spec[..., None]
    body_sd = _sd_circle(reg, cx, cy, r)
    body = ob.put(reg, body_sd, colour.astype(np.float32), paint=True)
    assert body is not None
    seam_rgb = ob.paint_rgb(0.5)
    for ox, oy, rr in ((0.75, -0.35, 0.62), (-0.85, 0.3, 0.7)):
        d = np.abs(_sd_circle(reg, cx + ox * r, cy + oy * r, rr * r))
        cov = cv.line_cov(d, 0.035 * ob.s) * body
        cv.fill(reg, cov, seam_rgb)


def _draw_box(ob: _Obj) -> None:
    cv = ob.cv
    ob.shadow(0.6)
    paint = ob.paint_rgb()
    ob.box(-0.5, 0.0, 0.28, 0.78, paint, paint=True, shade=ob.vertical(0.78, 0.0, 1.08, 0.96))
    ob.poly(
        [(-0.5, 0.78), (0.28, 0.78), (0.5, 0.93), (-0.28, 0.93)],
        ob.paint_rgb(1.2),
        paint=True,
        shade=ob.grain(tag=1),
    )
    ob.poly([(0.28, 0.0), (0.5, 0.15), (0.5, 0.93), (0.28, 0.78)], ob.paint_rgb(0.72), shade=ob.grain(tag=2))
    edge = ob.paint_rgb(0.5)
    ob.line(0.28, 0.0, 0.28, 0.78, 0.012, edge)
    ob.line(-0.5, 0.78, 0.28, 0.78, 0.012, edge)
    ob.line(0.28, 0.78, 0.5, 0.93, 0.012, edge)
    ob.box(-0.16, 0.78, -0.08, 0.93, cv.lit((205, 180, 120)))  # tape over the top
    ob.box(-0.16, 0.55, -0.08, 0.78, cv.lit((205, 180, 120)))
    label = cv.lit((240, 240, 236))
    ob.box(-0.42, 0.12, -0.1, 0.34, label, r=0.01)
    ink = cv.lit((60, 60, 64))
    for k in range(3):
        v = 0.29 - k * 0.055
        ob.line(-0.39, v, -0.16 - 0.04 * k, v, 0.012, ink)


def _draw_cone(ob: _Obj) -> None:
    cv = ob.cv
    ob.shadow(0.45)
    paint = ob.paint_rgb()
    ob.box(-0.36, 0.0, 0.36, 0.06, ob.paint_rgb(0.75), r=0.015, paint=True)
    body = [(-0.25, 0.05), (0.25, 0.05), (0.045, 0.96), (-0.045, 0.96)]
    x0 = ob.X(-0.25)
    x1 = ob.X(0.25)

    def across(reg: _Region) -> FloatArray:
        t = np.clip((reg.xs - np.float32(x0)) / np.float32(x1 - x0), 0.0, 1.0)
        light = 1.12 - 0.2 * t if ob.facing > 0 else 0.92 + 0.2 * t
        return light * ob.grain(tag=1)(reg)  # type: ignore[no-any-return]

    ob.poly(body, paint, paint=True, shade=across)
    ob.circle(0.0, 0.955, 0.045, paint, paint=True)
    stripe_rgb = cv.lit((232, 232, 228) if ob.colour is not Colour.WHITE else (70, 70, 74))
    mapped = [(ob.X(u), ob.Y(v)) for u, v in body]
    for v0, v1 in ((0.33, 0.46), (0.6, 0.7)):
        reg = ob.region(-0.25, v0, 0.25, v1)
        if reg is None:
            continue
        band = np.abs(reg.ys - np.float32(ob.Y((v0 + v1) / 2))) - np.float32((v1 - v0) / 2 * ob.s)
        sd = np.maximum(_sd_convex(reg, mapped), band)
        ob.put(reg, sd, stripe_rgb)


def _draw_pipe(ob: _Obj) -> tuple[float, float, float, float]:
    cv = ob.cv
    ob.shadow(0.52)
    d = 0.3
    paint = ob.paint_rgb()
    y_top, y_bottom = ob.Y(d), ob.Y(0.0)
    grain = ob.grain(0.04)

    def cylinder(reg: _Region) -> FloatArray:
        t = np.clip((reg.ys - np.float32(y_top)) / np.float32(y_bottom - y_top), 0.0, 1.0)
        light = 0.64 + 0.6 * np.clip(np.sin(np.float32(np.pi) * t), 0.0, 1.0) ** 0.7 * (1.05 - 0.35 * t)
        band = np.exp(-(((t - 0.3) / 0.06) ** 2)) * np.float32(0.0 if cv.night else 0.22)
        return (light + band) * grain(reg)  # type: ignore[no-any-return]

    for u in (-0.46,):  # the far end, peeking out behind
        reg = ob.region(u - 0.07, -0.01, u + 0.07, d + 0.01)
        if reg is not None:
            ob.put(
                reg, _sd_ellipse(reg, ob.X(u), ob.Y(d / 2), 0.06 * ob.s, d / 2 * ob.s), paint, True, cylinder
            )
    ob.box(-0.46, 0.0, 0.42, d, paint, paint=True, shade=cylinder)
    for u in (-0.38, 0.06):
        ob.box(u, -0.012, u + 0.04, d + 0.012, ob.paint_rgb(0.82), r=0.01, paint=True, shade=cylinder)
        for v in (0.05, 0.15, 0.25):
            ob.dot(u + 0.02, v, 0.008, cv.lit((70, 70, 74)))
    u = 0.42
    reg = ob.region(u - 0.07, -0.01, u + 0.07, d + 0.01)
    if reg is not None:
        x, y = ob.X(u), ob.Y(d / 2)
        ob.put(
            reg, _sd_ellipse(reg, x, y, 0.06 * ob.s, d / 2 * ob.s), ob.paint_rgb(0.9), True, ob.grain(tag=3)
        )
        ob.put(reg, _sd_ellipse(reg, x, y, 0.044 * ob.s, d / 2 * 0.78 * ob.s), cv.lit((34, 32, 30)))
    return ob.rect(-0.46, 0.0, 0.42, d)


def _draw_wall(ob: _Obj) -> tuple[float, float, float, float]:
    cv = ob.cv
    ob.shadow(0.6)
    h = 0.72
    paint = ob.paint_rgb()
    ob.box(-0.5, 0.0, 0.5, h, paint, paint=True, shade=ob.vertical(h, 0.0, 1.08, 0.96, 0.05))
    x0, y0, x1, y1 = ob.rect(-0.5, 0.0, 0.5, h)
    reg = cv.region(x0, y0, x1, y1)
    if reg is not None:
        bh, bw = h * ob.s / 6, ob.s / 4
        row = np.floor((reg.ys - np.float32(y0)) / np.float32(bh))
        lx = reg.xs - np.float32(x0) + np.float32(bw / 2) * np.mod(row, 2.0)
        fy = np.mod(reg.ys - np.float32(y0), np.float32(bh))
        fx = np.mod(lx, np.float32(bw))
        dist = np.minimum(np.minimum(fy, np.float32(bh) - fy), np.minimum(fx, np.float32(bw) - fx))
        inside = cv.cov(_sd_box(reg, x0, y0, x1, y1))
        cv.fill(reg, cv.line_cov(dist, 0.012 * ob.s) * inside, ob.paint_rgb(0.75))
    ob.box(-0.53, h, 0.53, h + 0.07, ob.paint_rgb(1.12), r=0.01, paint=True, shade=ob.grain(tag=1))
    return x0, y0, x1, y1
