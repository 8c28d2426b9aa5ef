"""Painting a :class:`~data.synthetic.layout.Layout` into a textured world raster with a label map.

The raster has ``scale`` pixels per world unit; raster pixel centres are at integer coordinates, so raster
pixel (i, j) is the ground point (j / scale, i / scale) wu. Each class has its own procedural texture (noise at
several frequencies, stripes, blobs, edges) and each world draws its own colours, so that colour alone does
not decide the class. Painting order follows what occludes what seen from above: ground, water, clutter,
roads, shadows, buildings, vehicles and persons, tree crowns.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import cKDTree

from data.catalog import IGNORE_INDEX, SYNTHETIC
from data.synthetic import textures as tx
from data.synthetic.layout import Layout, hull, rect
from data.synthetic.objects import Sprite, make_sprite, pose

CLS = {name: i for i, name in enumerate(SYNTHETIC.class_names)}


@dataclass
class World:
    """A textured world: rgb float32 [Hr, Wr, 3] in 0..1, labels uint8 [Hr, Wr] (train ids, 255 = ignore)."""

    rgb: np.ndarray
    labels: np.ndarray
    scale: float  # raster pixels per world unit
    layout: Layout

    @property
    def wu_to_raster(self) -> np.ndarray:
        """[3, 3]: world units -> raster pixels."""
        return np.diag([self.scale, self.scale, 1.0])


class _Painter:
    """Draws masks of polygons/lines in world units into region-of-interest (ROI) crops of the raster."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], scale: float) -> None:
        self.rng, self.scale = rng, scale
        self.h, self.w = int(np.ceil(size[1] * scale)), int(np.ceil(size[0] * scale))
        self.rgb = np.zeros((self.h, self.w, 3), np.float32)
        self.labels = np.full((self.h, self.w), CLS["vegetation"], np.uint8)

    def roi(self, pts_wu: np.ndarray, pad_wu: float = 0.0) -> tuple[int, int, int, int] | None:
        """(y0, y1, x0, x1) raster box around points [N, 2] (wu), clipped; None when outside the raster."""
        p = np.asarray(pts_wu).reshape(-1, 2) * self.scale
        pad = pad_wu * self.scale + 2
        x0, y0 = np.floor(p.min(0) - pad).astype(int)
        x1, y1 = np.ceil(p.max(0) + pad).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.w), min(y1, self.h)
        return None if x1 <= x0 or y1 <= y0 else (y0, y1, x0, x1)

    def _px(self, pts_wu: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        off = np.array([box[2], box[0]])
        return np.round((np.asarray(pts_wu) * self.scale - off) * 16).astype(np.int32).reshape(-1, 1, 2)

    def poly_mask(self, polys: list[np.ndarray], box: tuple[int, int, int, int]) -> np.ndarray:
        m = np.zeros((box[1] - box[0], box[3] - box[2]), np.uint8)
        for (
            p
        ) in polys:  # one call per polygon: a multi-polygon fillPoly would XOR their overlaps (even-odd rule)
            cv2.fillPoly(m, [self._px(p, box)], 1, cv2.LINE_8, 4)
        return m > 0

    def line_mask(self, pts: np.ndarray, width_wu: float, box: tuple[int, int, int, int]) -> np.ndarray:
        m = np.zeros((box[1] - box[0], box[3] - box[2]), np.uint8)
        thick = max(1, int(round(width_wu * self.scale)))
        cv2.polylines(m, [self._px(pts, box)], False, 1, thick, cv2.LINE_8, 4)
        return m > 0

    def noise(
        self, box: tuple[int, int, int, int], cells_wu: tuple[float, ...], amps: tuple[float, ...]
    ) -> np.ndarray:
        shape = (box[1] - box[0], box[3] - box[2])
        return tx.fractal_noise(self.rng, shape, tuple(c * self.scale for c in cells_wu), amps)

    def put(
        self, box: tuple[int, int, int, int], mask: np.ndarray, img: np.ndarray, label: int | None
    ) -> None:
        """Write image [h, w, 3] (or a colour [3]) and ``label`` where ``mask`` [h, w] is set, inside ``box``."""
        y0, y1, x0, x1 = box
        dst = self.rgb[y0:y1, x0:x1]
        dst[mask] = img[mask] if img.ndim == 3 else img
        if label is not None:
            self.labels[y0:y1, x0:x1][mask] = label

    def paste(self, sprite: Sprite, centre: np.ndarray, angle: float) -> None:
        """Composite a sprite (alpha-blended colour; label where alpha >= 0.5) at a ground pose."""
        m = np.diag([self.scale, self.scale, 1.0]) @ pose(centre, angle) @ np.linalg.inv(sprite.local_to_px)
        box = self.roi((pose(centre, angle) @ np.c_[sprite.corners(), np.ones(4)].T)[:2].T)
        if box is None:
            return
        m = np.array([[1, 0, -box[2]], [0, 1, -box[0]], [0, 0, 1.0]]) @ m
        size = (box[3] - box[2], box[1] - box[0])
        rgb = cv2.warpAffine(sprite.rgb, m[:2], size, flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(sprite.alpha, m[:2], size, flags=cv2.INTER_LINEAR)
        y0, y1, x0, x1 = box
        tx.blend_into(self.rgb[y0:y1, x0:x1], rgb, alpha)
        self.labels[y0:y1, x0:x1][alpha >= 0.5] = CLS[sprite.label]


def _palette(
    rng: np.random.Generator, base: list[tuple[float, float, float]], n: int, amount: float = 0.06
) -> np.ndarray:
    """``n`` jittered colours [n, 3] drawn from ``base`` (a world's own variants of a material)."""
    return np.stack([tx.jitter_color(rng, tx.pick(rng, base), amount) for _ in range(n)])


def paint_world(rng: np.random.Generator, lay: Layout, scale: float) -> World:
    """Texture and label the layout at ``scale`` raster px per wu."""
    pt = _Painter(rng, lay.size, scale)
    full = (0, pt.h, 0, pt.w)
    s = scale

    # --- ground: fields of low vegetation (Voronoi cells with noisy borders), some with crop rows ---
    gh, gw = lay.size[1] + 1, lay.size[0] + 1  # a 1 wu grid: cell borders finer than a pixel once rendered
    gy, gx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    gx = gx + 8 * tx.value_noise(rng, (gh, gw), 40)
    gy = gy + 8 * tx.value_noise(rng, (gh, gw), 40)
    _, nearest = cKDTree(lay.field_seeds).query(np.stack([gx.ravel(), gy.ravel()], axis=1))
    cell = nearest.reshape(gh, gw).astype(np.uint8)
    field = cv2.resize(cell, (pt.w, pt.h), interpolation=cv2.INTER_NEAREST)
    veg = _palette(rng, tx.VEGETATION, len(lay.field_kinds), 0.05)
    pt.rgb[:] = veg[field]
    for k in np.flatnonzero(lay.field_kinds == 5):  # crop rows: stripes of green and soil
        ys, xs = np.nonzero(cell == k)
        if ys.size == 0:
            continue
        box = pt.roi(np.array([[xs.min() - 1, ys.min() - 1], [xs.max() + 1, ys.max() + 1]]))
        if box is None:
            continue
        soil = tx.jitter_color(rng, tx.pick(rng, tx.SOIL), 0.04)
        st = tx.stripes(
            (box[1] - box[0], box[3] - box[2]),
            rng.uniform(2.5, 5) * s,
            rng.uniform(0, np.pi),
            0,
            (box[2], box[0]),
        )
        mix = np.clip(0.5 + 0.8 * st, 0, 1)[..., None]
        img = veg[k] * mix + soil * (1 - mix)
        pt.put(box, field[box[0] : box[1], box[2] : box[3]] == k, img, None)
    pt.rgb *= 1 + pt.noise(full, (60, 12, 3, 0.6), (0.06, 0.05, 0.04, 0.03))[..., None]
    edges = (field != np.roll(field, 1, 0)) | (field != np.roll(field, 1, 1))
    pt.rgb[cv2.dilate(edges.astype(np.uint8), np.ones((2, 2), np.uint8)) > 0] *= 0.88  # paths and hedges

    # --- water with muddy banks: a soil rim 1.5 wu wide is painted first, then the water inside it ---
    water_col = tx.jitter_color(rng, tx.pick(rng, tx.WATER), 0.025)
    bank_col = tx.jitter_color(rng, tx.pick(rng, tx.SOIL), 0.04)
    for rim in (1.5, 0.0):
        label = CLS["water"] if rim == 0 else None  # the rim keeps the vegetation label
        for pts, width in lay.rivers:
            box = pt.roi(pts, width)
            if box is not None:
                img = tx.shade(bank_col, pt.noise(box, (3, 1), (0.1, 0.08))) if rim else water_col
                pt.put(box, pt.line_mask(pts, width + 2 * rim, box), img, label)
        for poly in lay.ponds:
            out = poly - poly.mean(0)
            grown = poly + out / np.linalg.norm(out, axis=1, keepdims=True) * rim
            box = pt.roi(grown)
            if box is not None:
                img = tx.shade(bank_col, pt.noise(box, (3, 1), (0.1, 0.08))) if rim else water_col
                pt.put(box, pt.poly_mask([grown], box), img, label)
    wmask = pt.labels == CLS["water"]
    if wmask.any():
        ripple = tx.stripes(
            (pt.h, pt.w), rng.uniform(3.0, 4.5) * s, rng.uniform(0, np.pi)
        )  # visible at 1 px/wu
        mod = pt.noise(full, (50, 12), (0.06, 0.02)) + 0.07 * ripple * (1 + pt.noise(full, (15,), (0.5,)))
        sparkle = (rng.random((pt.h, pt.w)) < 0.002).astype(np.float32) * 0.5
        pt.rgb[wmask] = water_col * (1 + mod[wmask] + sparkle[wmask])[:, None]

    # --- clutter (ignore): construction sites with debris; parking lots with bay lines ---
    for poly, kind in lay.clutter:
        box = pt.roi(poly)
        if box is None:
            continue
        m = pt.poly_mask([poly], box)
        if kind == "construction":
            base = tx.jitter_color(rng, tx.pick(rng, tx.CLUTTER), 0.04)
            img = tx.shade(base, pt.noise(box, (12, 3, 1), (0.12, 0.1, 0.1)))
            pt.put(box, m, img, IGNORE_INDEX)
            for _ in range(int(rng.integers(4, 14))):
                c = poly[rng.integers(len(poly))] * 0.4 + poly.mean(0) * 0.6 + rng.normal(0, 4, 2)
                deb = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * rng.uniform(0.8, 3, 2) + c
                col = tx.jitter_color(
                    rng,
                    tx.pick(rng, [(0.8, 0.8, 0.78), (0.45, 0.45, 0.47), (0.9, 0.5, 0.1), (0.3, 0.4, 0.6)]),
                )
                pt.put(box, pt.poly_mask([deb], box) & m, col, None)
        else:
            base = tx.jitter_color(rng, tx.pick(rng, tx.ASPHALT), 0.03)
            pt.put(box, m, tx.shade(base, pt.noise(box, (10, 1), (0.05, 0.05))), IGNORE_INDEX)
            e = poly[1] - poly[0]
            for k in range(int(np.linalg.norm(e) // 8) + 1):  # bay lines, every 8 wu along the road side
                a = poly[0] + e / np.linalg.norm(e) * 8 * k
                pt.put(
                    box,
                    pt.line_mask(np.array([a, a + (poly[3] - poly[0]) * 0.6]), 0.5, box) & m,
                    np.float32([0.85] * 3),
                    None,
                )

    # --- roads: sidewalks (ignore), asphalt, centre and edge markings (skipped inside crossing roads) ---
    asphalt = tx.jitter_color(rng, tx.pick(rng, tx.ASPHALT), 0.02)
    paving = tx.jitter_color(rng, tx.pick(rng, tx.PAVING), 0.03)
    mark_col = (
        np.float32([0.86, 0.72, 0.22])
        if lay.roads and lay.roads[0].yellow
        else np.float32([0.88, 0.88, 0.85])
    )
    road_masks = []
    for road in lay.roads:
        if road.sidewalk:
            m = pt.line_mask(road.pts, road.width + 2 * road.sidewalk, full)
            tiles = (
                0.04
                * np.sign(tx.stripes((pt.h, pt.w), 2.0 * s, 0.3))
                * np.sign(tx.stripes((pt.h, pt.w), 2.0 * s, 1.87))
            )
            pt.put(
                full,
                m & (pt.labels != CLS["road"]),
                tx.shade(paving, tiles + pt.noise(full, (6, 1), (0.05, 0.04))),
                IGNORE_INDEX,
            )
        road_masks.append(pt.line_mask(road.pts, road.width, full))
    surface = tx.shade(asphalt, pt.noise(full, (25, 6, 1), (0.06, 0.05, 0.05)))
    for mask in road_masks:
        pt.put(full, mask, surface, CLS["road"])
    for i, road in enumerate(lay.roads):
        others = np.zeros((pt.h, pt.w), bool)
        for j, m in enumerate(road_masks):
            if j != i:
                others |= cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        marks = np.zeros((pt.h, pt.w), bool)
        dash, gap = rng.uniform(5, 9), rng.uniform(5, 9)
        for k in range(0, len(road.pts), int(round((dash + gap) / 2))):
            seg = road.pts[k : k + int(round(dash / 2)) + 1]
            if len(seg) > 1:
                marks |= pt.line_mask(seg, 0.9, full)
        if road.edge_lines:
            n = np.gradient(road.pts, axis=0)[:, ::-1] * [-1, 1]
            n /= np.linalg.norm(n, axis=1, keepdims=True)
            for side in (-1, 1):
                off = road.lanes_width / 2 - (0 if road.parking else 1.3)  # between lanes and parking strip
                marks |= pt.line_mask(road.pts + n * side * off, 0.7, full)
        worn = np.clip(0.85 + 0.3 * pt.noise(full, (4,), (1.0,)), 0.55, 1.0)[..., None]
        pt.put(full, marks & road_masks[i] & ~others, mark_col * worn + surface * (1 - worn), None)

    # --- shadows of buildings, trees and parked objects, cast along the sun direction ---
    shadow = np.zeros((pt.h, pt.w), np.uint8)
    sun = lay.sun * lay.shadow_len
    polys = [hull(r, r + sun * b.height) for b in lay.buildings for r in b.rects]
    for c in lay.crowns:
        th = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        for dx, dy, r in c.lobes:
            circ = c.centre + [dx, dy] + r * np.stack([np.cos(th), np.sin(th)], 1) + sun * 2.2 * c.radius
            polys.append(circ)
    polys += [rect(t.centre + lay.sun * 0.8, t.angle, *t.size) for t in lay.things]
    for p in polys:
        cv2.fillPoly(shadow, [pt._px(p, full)], 1, cv2.LINE_8, 4)
    soft = cv2.GaussianBlur(shadow.astype(np.float32), (0, 0), 0.6 * s)
    pt.rgb *= 1 - rng.uniform(0.3, 0.5) * soft[..., None]

    # --- buildings: visible facade strip (building) next to the displaced roof (roof), far ones first ---
    roofs = _palette(rng, tx.ROOF, 8)
    facades = _palette(rng, tx.FACADE, 5)
    lit = (
        float(np.dot(lay.sun, lay.lean)) > 0
    )  # the visible facade faces the camera: lit if the sun is behind it
    for b in sorted(lay.buildings, key=lambda b: -float(np.dot(b.rects[0].mean(0), lay.lean))):
        tops = [r + lay.lean * b.height for r in b.rects]
        box = pt.roi(np.concatenate(b.rects + tops), 1.0)
        if box is None:
            continue
        along, across = tx.coords((box[1] - box[0], box[3] - box[2]), (box[2], box[0]))
        ca, sa = np.cos(b.angle), np.sin(b.angle)
        u, v = along * ca + across * sa, -along * sa + across * ca  # building-aligned raster coordinates
        wall = facades[b.facade_color] * (1.0 if lit else 0.65)
        floors = 3.2 * s * max(np.linalg.norm(lay.lean), 0.2)
        win = (np.sin(2 * np.pi * u / (3.5 * s)) > 0.2) & (np.sin(2 * np.pi * (u * 0.3 + v) / floors) > 0.1)
        img = np.where(win[..., None], wall * 0.45, tx.shade(wall, pt.noise(box, (2,), (0.04,))))
        pt.put(
            box,
            pt.poly_mask([hull(r, t) for r, t in zip(b.rects, tops, strict=True)], box),
            img.astype(np.float32),
            CLS["building"],
        )
        col = roofs[b.roof_color]
        for top in tops:
            m = pt.poly_mask([top], box)
            if b.roof == "gable":  # two slopes lit differently, a ridge line, tile rows
                c = top.mean(0) * s - [box[2], box[0]]
                vv = -(along - c[0]) * sa + (across - c[1]) * ca
                side = np.sign(vv) * np.sign(np.dot([-sa, ca], -lay.sun) + 1e-6)
                mod = 0.2 * side + 0.06 * tx.stripes(m.shape, 1.5 * s, b.angle, 0, (box[2], box[0]))
                mod = np.where(np.abs(vv) < 0.4 * s, 0.15, mod) + pt.noise(box, (5,), (0.03,))
            else:  # flat: parapet rim, noise, roof boxes
                rim = (
                    cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(1, int(0.8 * s)))
                    == 0
                )
                mod = pt.noise(box, (8, 1), (0.05, 0.03)) + np.where(rim, 0.12, 0.0)
            pt.put(box, m, tx.shade(col, mod.astype(np.float32)), CLS["roof"])
            if b.roof == "flat":
                for _ in range(int(rng.integers(0, 4))):
                    c = top.mean(0) + rng.normal(0, 0.2, 2) * np.ptp(top, 0)
                    boxpoly = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * rng.uniform(1.0, 2.5, 2) + c
                    pt.put(box, pt.poly_mask([boxpoly], box) & m, np.float32([0.7, 0.7, 0.68]), None)
            pt.put(box, pt.line_mask(np.vstack([top, top[:1]]), 0.8, box) & m, col * 0.65, None)

    # --- static vehicles and persons ---
    for t in lay.things:
        pt.paste(make_sprite(t, s), t.centre, t.angle)

    # --- tree crowns: lumpy outlines, leaf-clump texture, lit on the sun-facing side ---
    greens = _palette(rng, tx.TREE, 5, 0.04)
    for c in lay.crowns:
        box = pt.roi(c.lobes[:, :2] + c.centre, c.radius * 1.2)
        if box is None:
            continue
        x, y = tx.coords((box[1] - box[0], box[3] - box[2]), (box[2], box[0]))
        px, py = x / s - c.centre[0], y / s - c.centre[1]
        f = np.full(px.shape, -1.0, np.float32)
        for dx, dy, r in np.vstack([c.lobes, [0, 0, 0.8 * c.radius]]):
            f = np.maximum(f, 1 - np.hypot(px - dx, py - dy) / r)
        f += 0.04 * pt.noise(box, (2.0,), (1.0,))
        m = f > 0
        light = -(px * lay.sun[0] + py * lay.sun[1]) / c.radius
        mod = 0.22 * light - 0.3 * (np.hypot(px, py) / c.radius) ** 2 + pt.noise(box, (1.5, 0.6), (0.2, 0.08))
        col = tx.jitter_color(rng, tuple(greens[c.color]), 0.015, (0.92, 1.08))
        pt.put(box, m, tx.shade(col, mod.astype(np.float32)), CLS["tree"])

    np.clip(pt.rgb, 0.0, 1.0, out=pt.rgb)
    return World(pt.rgb, pt.labels, scale, lay)
