"""Procedural scenes, the layout (horizon, ground and floor lines) and the backgrounds: sky,
hills, grass, sand, road, and the plain concrete and brick walls with their floor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tierflow.model.scenes.canvas import _Canvas, _dot, _Noise, _Region, _sd_circle
from tierflow.model.scenes.grammar import PLAIN_WALLS, Background, FloatArray, Scene

HORIZON = 0.5
GROUND_Y = 0.80  # where objects stand outdoors
FLOOR_LINE = 0.76  # plain walls: where the floor starts
FLOOR_Y = 0.88  # plain walls: where objects stand


def _vertical_gradient(reg: _Region, y0: float, y1: float, top: FloatArray, bottom: FloatArray) -> FloatArray:
    t = np.clip((reg.ys - np.float32(y0)) / np.float32(y1 - y0), 0.0, 1.0)[..., None]  # [h, 1, 1]
    return top + (bottom - top) * t  # type: ignore[no-any-return]


def _draw_sky(cv: _Canvas, noise: _Noise, rng: np.random.Generator) -> None:
    reg = cv.full(0.0, HORIZON + 0.02)
    if cv.night:
        top = np.array([6, 8, 24], np.float32) / 255
        bottom = np.array([28, 34, 62], np.float32) / 255
    else:
        top = np.array([92, 148, 222], np.float32) / 255
        bottom = np.array([188, 212, 236], np.float32) / 255
    sky = np.broadcast_to(_vertical_gradient(reg, 0.0, HORIZON, top, bottom), cv.rgb[reg.window].shape)
    cv.rgb[reg.window] = sky
    clouds = noise.fbm(cv.res, reg, 1, 3, 4, aspect_y=3)
    amount = np.clip((clouds - 0.25) * 2.2, 0.0, 0.85) * np.clip(1.2 - reg.ys * 2.0, 0.0, 1.0)
    cloud_rgb = np.array([0.30, 0.32, 0.40] if cv.night else [0.97, 0.97, 0.98], np.float32)
    cv.fill(reg, amount * np.float32(0.5 if cv.night else 1.0), cloud_rgb)
    if not cv.night:
        return
    mx, my = float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.08, 0.22))
    moon = cv.region(mx - 0.05, my - 0.05, mx + 0.05, my + 0.05)
    if moon is not None:
        cv.fill(moon, cv.cov(_sd_circle(moon, mx, my, 0.035)), np.array([0.92, 0.92, 0.84], np.float32))
        for _ in range(4):
            ox, oy, rr = rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02), rng.uniform(0.003, 0.008)
            crater = cv.cov(
                np.maximum(_sd_circle(moon, mx + ox, my + oy, rr), _sd_circle(moon, mx, my, 0.035))
            )
            cv.fill(moon, crater * np.float32(0.5), np.array([0.70, 0.70, 0.64], np.float32))
    for _ in range(40):
        sx, sy = float(rng.uniform(0.0, 1.0)), float(rng.uniform(0.0, HORIZON - 0.08))
        r = float(rng.uniform(0.0012, 0.003))
        _dot(cv, sx, sy, r, np.array([0.95, 0.95, 1.0], np.float32), float(rng.uniform(0.5, 1.0)))


def _draw_hills(
    cv: _Canvas, noise: _Noise, rng: np.random.Generator, rgb: Sequence[int], bumpy: bool
) -> None:
    reg = cv.full(HORIZON - 0.12, HORIZON + 0.01)
    x = reg.xs
    p1, p2 = rng.uniform(0, 1, 2)
    line = (
        HORIZON
        - 0.045
        - 0.03 * np.sin(2 * np.pi * (1.3 * x + p1))
        - 0.014 * np.sin(2 * np.pi * (3.1 * x + p2))
    )
    if bumpy:  # a tree line
        line = line - 0.02 * np.abs(
            noise.fbm(cv.res, _Region(0, 1, reg.j0, reg.j1, x, np.full((1, 1), 0.5, np.float32)), 2, 24, 4)
        )
    sd = line - reg.ys
    shade = 1.0 + 0.12 * noise.fbm(cv.res, reg, 3, 12, 4)
    colour = cv.lit(rgb)[None, None, :] * shade[..., None]
    cv.fill(reg, cv.cov(sd.astype(np.float32)), colour)


def _textured(cv: _Canvas, reg: _Region, rgb: Sequence[int], texture: FloatArray) -> FloatArray:
    return cv.lit(rgb)[None, None, :] * (1.0 + texture)[..., None]


def _draw_grass(cv: _Canvas, noise: _Noise, reg: _Region) -> None:
    texture = 0.10 * noise.fbm(cv.res, reg, 4, 6, 3) + 0.22 * noise.fbm(cv.res, reg, 5, 48, 4, aspect=4)
    cv.fill(reg, np.ones((1, 1), np.float32), _textured(cv, reg, (70, 138, 48), texture))


def _draw_sand(cv: _Canvas, noise: _Noise, reg: _Region) -> None:
    res = cv.res
    texture = 0.06 * noise.fbm(res, reg, 6, 5, 3) + 0.08 * noise.fbm(res, reg, 7, 96, 4)
    ripple_weight = min(max((res / 70.0 - 3.0) / 3.0, 0.0), 1.0)
    if ripple_weight > 0:
        warp = noise.fbm(res, reg, 8, 4, 2)
        texture = texture + np.float32(0.05 * ripple_weight) * np.sin(
            np.float32(2 * np.pi) * (reg.ys * np.float32(70.0) + reg.xs * np.float32(6.0) + 2.0 * warp)
        )
    cv.fill(reg, np.ones((1, 1), np.float32), _textured(cv, reg, (218, 192, 140), texture))


def _draw_road(cv: _Canvas, noise: _Noise, rng: np.random.Generator) -> None:
    verge = cv.full(HORIZON, 0.585)
    _draw_grass(cv, noise, verge)
    reg = cv.full(0.58, 1.0)
    res = cv.res
    texture = 0.05 * noise.fbm(res, reg, 9, 4, 3) + 0.14 * noise.fbm(res, reg, 10, 64, 4)
    sd_top = np.float32(0.58) - reg.ys
    colour = _textured(cv, reg, (80, 80, 86), texture)
    cv.fill(reg, np.broadcast_to(cv.cov(sd_top), (reg.i1 - reg.i0, reg.j1 - reg.j0)), colour)
    white = cv.lit((225, 225, 215))
    for y in (0.60, 0.97):
        band = cv.full(y - 0.01, y + 0.01)
        cov = cv.line_cov(np.abs(band.ys - np.float32(y)), 0.008)
        cv.fill(band, np.broadcast_to(cov, (band.i1 - band.i0, band.j1 - band.j0)), white)
    period, length, yc = 0.125, 0.07, 0.885
    offset = float(rng.uniform(0, period))
    band = cv.full(yc - 0.02, yc + 0.02)
    qx = np.abs(np.mod(band.xs - np.float32(offset), np.float32(period)) - np.float32(period / 2))
    qx = qx - np.float32(length / 2)
    qy = np.abs(band.ys - np.float32(yc)) - np.float32(0.0065)
    sd = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2) + np.minimum(np.maximum(qx, qy), 0.0)
    wear = 1.0 - 0.25 * np.clip(noise.fbm(res, band, 11, 40, 3), 0.0, 1.0)
    cv.fill(band, cv.cov(sd) * wear, cv.lit((235, 230, 205)))


def _draw_floor(cv: _Canvas, noise: _Noise) -> None:
    reg = cv.full(FLOOR_LINE, 1.0)
    texture = 0.06 * noise.fbm(cv.res, reg, 12, 5, 3) + 0.06 * noise.fbm(cv.res, reg, 13, 96, 3)
    sd = np.float32(FLOOR_LINE) - reg.ys
    cov = np.broadcast_to(cv.cov(sd), (reg.i1 - reg.i0, reg.j1 - reg.j0))
    cv.fill(reg, cov, _textured(cv, reg, (118, 116, 110), texture))
    shadow = np.clip(1.0 - (reg.ys - np.float32(FLOOR_LINE)) / np.float32(0.03), 0.0, 1.0) * 0.35
    cv.darken(reg, np.broadcast_to(shadow * cov, cov.shape))


def _draw_concrete(cv: _Canvas, noise: _Noise, rng: np.random.Generator) -> None:
    reg = cv.full(0.0, FLOOR_LINE + 0.01)
    res = cv.res
    texture = 0.07 * noise.fbm(res, reg, 14, 3, 3) + 0.07 * noise.fbm(res, reg, 15, 80, 4)
    cv.rgb[reg.window] = _textured(cv, reg, (178, 174, 166), texture)
    dark = cv.lit((120, 117, 110))
    for x in (1 / 3, 2 / 3):
        cov = cv.line_cov(np.abs(reg.xs - np.float32(x)), 0.003)
        cv.fill(reg, np.broadcast_to(cov, (reg.i1 - reg.i0, reg.j1 - reg.j0)), dark)
    cov = cv.line_cov(np.abs(reg.ys - np.float32(0.38)), 0.003)
    cv.fill(reg, np.broadcast_to(cov, (reg.i1 - reg.i0, reg.j1 - reg.j0)), dark)
    hole = cv.lit((70, 68, 64))
    for gx in range(6):
        for gy in range(4):
            _dot(cv, (gx + 0.5) / 6, 0.1 + gy * 0.19, 0.005, hole)
    _draw_floor(cv, noise)


def _draw_brick(cv: _Canvas, noise: _Noise, rng: np.random.Generator) -> None:
    reg = cv.full(0.0, FLOOR_LINE + 0.01)
    res = cv.res
    bh, bw, mortar = 0.05, 0.115, 0.007
    y = reg.ys
    row = np.floor(y / np.float32(bh))
    x = reg.xs + np.float32(bw / 2) * np.mod(row, 2.0)
    col = np.floor(x / np.float32(bw))
    table = np.random.default_rng([noise.seed, 77]).uniform(0.82, 1.12, 4096).astype(np.float32)
    shade = table[(row.astype(np.int64) * 131 + col.astype(np.int64) * 17) % 4096]
    texture = (shade - 1.0) + 0.06 * noise.fbm(res, reg, 16, 60, 4)
    cv.rgb[reg.window] = _textured(cv, reg, (152, 74, 52), texture)
    fy = np.mod(y, np.float32(bh))
    fx = np.mod(x, np.float32(bw))
    dist = np.minimum(np.minimum(fy, np.float32(bh) - fy), np.minimum(fx, np.float32(bw) - fx))
    cv.fill(reg, cv.line_cov(dist, mortar), cv.lit((188, 182, 170)))
    _draw_floor(cv, noise)


def _draw_background(cv: _Canvas, scene: Scene, noise: _Noise, rng: np.random.Generator) -> None:
    bg = scene.background
    if bg in PLAIN_WALLS:
        (_draw_concrete if bg is Background.CONCRETE else _draw_brick)(cv, noise, rng)
        return
    _draw_sky(cv, noise, rng)
    hills = {
        Background.ROAD: (84, 116, 76),
        Background.GRASS: (88, 128, 72),
        Background.SAND: (200, 170, 120),
    }
    _draw_hills(cv, noise, rng, hills[bg], bumpy=bg is not Background.SAND)
    if bg is Background.ROAD:
        _draw_road(cv, noise, rng)
    else:
        reg = cv.full(HORIZON, 1.0)
        (_draw_grass if bg is Background.GRASS else _draw_sand)(cv, noise, reg)
    haze = cv.full(HORIZON, HORIZON + 0.1)
    amount = np.clip(1.0 - (haze.ys - np.float32(HORIZON)) / np.float32(0.1), 0.0, 1.0) * np.float32(0.25)
    haze_rgb = np.array([0.11, 0.13, 0.24] if cv.night else [0.80, 0.86, 0.93], np.float32)
    cv.fill(haze, np.broadcast_to(amount, (haze.i1 - haze.i0, haze.j1 - haze.j0)), haze_rgb)
