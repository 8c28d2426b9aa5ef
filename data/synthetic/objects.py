"""Vehicles and persons: their sprites (small RGBA images) and, for moving ones, a rigid pose per frame.

An object is flat on the ground plane, so its image motion is exactly ``H_s M(s) M(t)^-1 H_t^-1`` between
frames t and s, where M is the object's pose (object-local wu -> world wu). The same poses drive both the
rendering and the optical flow, which makes the flow exact by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from data.synthetic import textures as tx
from data.synthetic.layout import Mover, Road, Thing

_OVERSAMPLE = 4  # sprites are drawn at 4x and box-filtered, which anti-aliases their outlines


@dataclass
class Sprite:
    """An object's look: rgb float32 [h, w, 3], alpha float32 [h, w] in 0..1, at ``scale`` px per wu.

    The object-local origin (its centre) is at sprite pixel ``origin`` = (x, y); local x points forward.
    """

    rgb: np.ndarray
    alpha: np.ndarray
    scale: float
    origin: tuple[float, float]
    label: str  # class name

    @property
    def local_to_px(self) -> np.ndarray:
        """[3, 3]: object-local wu -> sprite pixels."""
        return np.array([[self.scale, 0, self.origin[0]], [0, self.scale, self.origin[1]], [0, 0, 1.0]])

    def corners(self) -> np.ndarray:
        """Sprite outline in object-local wu, float64 [4, 2]."""
        h, w = self.alpha.shape
        px = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
        return (px - np.array(self.origin)) / self.scale


def pose(centre: np.ndarray, angle: float) -> np.ndarray:
    """Rigid transform [3, 3]: object-local wu -> world wu (rotation by ``angle``, then translation)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, centre[0]], [s, c, centre[1]], [0.0, 0.0, 1.0]])


def _canvas(length: float, width: float, scale: float) -> tuple[np.ndarray, float, tuple[float, float]]:
    """An empty oversampled canvas fitting an object of ``length`` x ``width`` wu (+1 wu margin)."""
    s = scale * _OVERSAMPLE
    w_px, h_px = int(np.ceil((length + 2) * s)), int(np.ceil((width + 2) * s))
    return np.zeros((h_px, w_px), np.uint8), s, ((w_px - 1) / 2.0, (h_px - 1) / 2.0)


def _poly_px(poly_wu: np.ndarray, s: float, origin: tuple[float, float]) -> list[np.ndarray]:
    return [np.round((np.asarray(poly_wu) * s + origin) * 16).astype(np.int32).reshape(-1, 1, 2)]


def _box(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def _rounded(length: float, width: float, r: float) -> np.ndarray:
    """Outline [N, 2] of a rounded rectangle centred at 0 (cars seen from above)."""
    pts = []
    for cx, cy, a0 in ((length / 2 - r, width / 2 - r, 0), (-length / 2 + r, width / 2 - r, 90),
                       (-length / 2 + r, -width / 2 + r, 180), (length / 2 - r, -width / 2 + r, 270)):  # fmt: skip
        for a in np.deg2rad(np.arange(a0, a0 + 91, 15)):
            pts.append((cx + r * np.cos(a), cy + r * np.sin(a)))
    return np.array(pts)


def make_sprite(thing: Thing, scale: float) -> Sprite:
    """Draw a vehicle or a person at ``scale`` px per wu; colours come from ``thing.seed``."""
    rng = np.random.default_rng(thing.seed)
    length, width = thing.size
    layers: list[tuple[np.ndarray, np.ndarray]] = []  # (polygon in local wu, colour)
    if thing.kind == "person":
        body = tx.jitter_color(rng, tx.pick(rng, tx.CLOTHES), 0.05)
        hair = tx.jitter_color(rng, tx.pick(rng, tx.HAIR), 0.03)
        th = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        layers.append((np.stack([length / 2 * np.cos(th), width / 2 * np.sin(th)], 1), body))  # shoulders
        layers.append((np.stack([0.95 * np.cos(th) + 0.2, 0.95 * np.sin(th)], 1), hair))  # head
        label = "person"
    else:
        body = tx.jitter_color(rng, tx.pick(rng, tx.VEHICLE, tx.VEHICLE_W), 0.03)
        glass = tx.jitter_color(rng, (0.10, 0.12, 0.15), 0.02)
        layers.append((_rounded(length, width, min(1.5, width / 3)), body))
        if thing.kind == "truck":
            cargo = tx.jitter_color(
                rng, tx.pick(rng, [(0.85, 0.85, 0.85), (0.6, 0.6, 0.62), (0.2, 0.35, 0.6)]), 0.04
            )
            layers.append(
                (_box(-length / 2 + 0.3, length / 2 - 4.2, -width / 2 + 0.3, width / 2 - 0.3), cargo)
            )
            layers.append(
                (_box(length / 2 - 2.6, length / 2 - 1.3, -width / 2 + 0.8, width / 2 - 0.8), glass)
            )
        else:
            ln, wd = length, width
            layers.append((_box(0.12 * ln, 0.30 * ln, -0.42 * wd, 0.42 * wd), glass))  # windscreen
            layers.append((_box(-0.40 * ln, -0.28 * ln, -0.40 * wd, 0.40 * wd), glass))  # rear window
            roof = body * np.float32(1.12 if rng.random() < 0.8 else 0.4)  # some cars have a dark roof
            layers.append((_box(-0.28 * ln, 0.12 * ln, -0.40 * wd, 0.40 * wd), np.clip(roof, 0, 1)))
        label = "vehicle"
    mask, s, origin = _canvas(length, width, scale)
    rgb = np.zeros(mask.shape + (3,), np.float32)
    for i, (poly, color) in enumerate(layers):
        m = np.zeros_like(mask)
        cv2.fillPoly(m, _poly_px(poly, s, origin), 1, cv2.LINE_8, 4)
        if i == 0:
            mask = m
            # darker rim: seen from above, the sides of a body fall away from the light
            rim = cv2.erode(m, np.ones((3, 3), np.uint8), iterations=max(1, int(0.5 * s)))
            shade = np.where(rim > 0, 1.0, 0.6).astype(np.float32)
            rgb[:] = color * shade[..., None]
        else:
            rgb[m > 0] = color
    size = (mask.shape[1] // _OVERSAMPLE, mask.shape[0] // _OVERSAMPLE)
    crop_w, crop_h = size[0] * _OVERSAMPLE, size[1] * _OVERSAMPLE
    alpha = mask[:crop_h, :crop_w].astype(np.float32)
    premult = rgb[:crop_h, :crop_w] * alpha[..., None]
    alpha_s = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    rgb_s = cv2.resize(premult, size, interpolation=cv2.INTER_AREA) / np.maximum(alpha_s, 1e-6)[..., None]
    # the oversampled pixel u maps to (u - (k-1)/2) / k in the small sprite (box-filter centre convention)
    k = _OVERSAMPLE
    small_origin = ((origin[0] - (k - 1) / 2) / k, (origin[1] - (k - 1) / 2) / k)
    return Sprite(np.clip(rgb_s, 0, 1).astype(np.float32), alpha_s, scale, small_origin, label)


def mover_poses(mover: Mover, roads: list[Road], n_frames: int) -> np.ndarray:
    """Poses float64 [T, 3, 3] (object-local wu -> world wu) of a moving object at frames 0..T-1."""
    out = np.empty((n_frames, 3, 3))
    for t in range(n_frames):
        if mover.road >= 0:  # a vehicle keeps its lane; it faces the direction it drives
            road = roads[mover.road]
            p, tan = road.at(mover.s0 + mover.speed * t)
            normal = np.array([-tan[1], tan[0]])
            angle = float(np.arctan2(tan[1], tan[0])) + (np.pi if mover.speed < 0 else 0.0)
            out[t] = pose(p + normal * mover.offset, angle)
        else:  # a walker on a gently curving path
            heading = mover.heading + mover.turn * t
            if abs(mover.turn) > 1e-9:
                x = (np.sin(heading) - np.sin(mover.heading)) / mover.turn
                y = (np.cos(mover.heading) - np.cos(heading)) / mover.turn
            else:
                x, y = t * np.cos(heading), t * np.sin(heading)
            centre = mover.thing.centre + mover.speed * np.array([x, y])
            out[t] = pose(centre, heading)
    return out
