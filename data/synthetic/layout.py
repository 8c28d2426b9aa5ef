"""The geometric layout of one world: roads, water, buildings, trees, clutter, vehicles and persons.

Everything here is geometry in world units (wu) on the ground plane, decided with one random generator; the
textures are painted later (:mod:`data.synthetic.world`). Placement is checked against a 1 wu occupancy grid so
that buildings do not stand on roads or in rivers. Features are placed near the camera track so that every
class is actually seen by the flight (the world is only as large as what the flight sees).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

# occupancy codes of the 1 wu placement grid
FREE, WATER, ROAD, WALK, BUILT, CLUTTER, TREE = 0, 1, 2, 3, 4, 5, 6


@dataclass
class Road:
    """A road: centreline [N, 2] (wu, ~2 wu apart, extending past the world) and widths (wu).

    ``width`` is the whole paved width: two driving lanes plus, when ``parking`` > 0, a parking strip of that
    width on each side (so parked cars never stand in a lane that moving cars use).
    """

    pts: np.ndarray
    width: float
    sidewalk: float
    parking: float = 0.0
    yellow: bool = False  # centre-line colour
    edge_lines: bool = True

    @property
    def lanes_width(self) -> float:
        """Width of the two driving lanes together (wu)."""
        return self.width - 2 * self.parking

    def __post_init__(self) -> None:
        seg = np.linalg.norm(np.diff(self.pts, axis=0), axis=1)
        self.arc = np.concatenate([[0.0], np.cumsum(seg)])  # [N] arc length at each point
        tan = np.gradient(self.pts, axis=0)
        self.tangents = tan / np.linalg.norm(tan, axis=1, keepdims=True)  # [N, 2] unit tangents

    @property
    def length(self) -> float:
        return float(self.arc[-1])

    def at(self, s: float) -> tuple[np.ndarray, np.ndarray]:
        """Point [2] and unit tangent [2] at arc length ``s`` (linear interpolation, clamped to the ends)."""
        p = np.array([np.interp(s, self.arc, self.pts[:, i]) for i in range(2)])
        t = np.array([np.interp(s, self.arc, self.tangents[:, i]) for i in range(2)])
        return p, t / np.linalg.norm(t)


@dataclass
class Building:
    """Rectangles [K, 4, 2] of the footprint (an L shape has two), height (wu), roof style and colours."""

    rects: list[np.ndarray]
    height: float
    angle: float  # orientation of the long side (rad)
    roof: str  # "gable" or "flat"
    roof_color: int  # index into the world's roof palette
    facade_color: int


@dataclass
class Crown:
    """A tree crown: centre [2], radius, lobes [L, 3] (dx, dy, r) making its outline lumpy, colour index."""

    centre: np.ndarray
    radius: float
    lobes: np.ndarray
    color: int


@dataclass
class Thing:
    """A vehicle or person on the ground: kind, centre [2], heading (rad), size (length, width) in wu."""

    kind: str  # "car", "truck" or "person"
    centre: np.ndarray
    angle: float
    size: tuple[float, float]
    seed: int  # sprite colours are drawn from this seed, so a moving object looks the same in every frame


@dataclass
class Mover:
    """A moving object: its look and its trajectory (pose per frame is computed by :mod:`objects`)."""

    thing: Thing
    road: int  # road index for vehicles, -1 for walkers
    offset: float  # lateral offset from the road centreline (vehicles)
    s0: float  # arc length at frame 0 (vehicles)
    speed: float  # wu per frame, signed along the road for vehicles
    heading: float = 0.0  # walkers: direction of walking (rad)
    turn: float = 0.0  # walkers: heading change per frame (rad)


@dataclass
class Layout:
    """All geometry of one world of ``size`` = (width, height) wu."""

    size: tuple[int, int]
    urban: float
    sun: np.ndarray  # [2] unit vector: direction shadows fall
    shadow_len: float  # shadow length per wu of height
    lean: np.ndarray  # [2] displacement of a roof per wu of building height (oblique view)
    field_seeds: np.ndarray  # [K, 2]
    field_kinds: np.ndarray  # [K] int: 0..4 vegetation look, 5 = crop rows
    rivers: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (centreline [N, 2], width)
    ponds: list[np.ndarray] = field(default_factory=list)  # polygons [N, 2]
    roads: list[Road] = field(default_factory=list)
    clutter: list[tuple[np.ndarray, str]] = field(
        default_factory=list
    )  # (polygon [N, 2], "construction"|"parking")
    buildings: list[Building] = field(default_factory=list)
    crowns: list[Crown] = field(default_factory=list)
    things: list[Thing] = field(default_factory=list)  # static vehicles and persons
    movers: list[Mover] = field(default_factory=list)


def curve(
    rng: np.random.Generator, through: np.ndarray, angle: float, length: float, wiggle: float
) -> np.ndarray:
    """A gently curving line [N, 2] through ``through`` at ``angle``, ``length`` long, sampled every 2 wu."""
    s = np.arange(-length / 2, length / 2 + 2.0, 2.0)
    d = np.array([np.cos(angle), np.sin(angle)])
    n = np.array([-d[1], d[0]])
    period = rng.uniform(300, 900)
    phase = rng.uniform(0, 2 * np.pi)
    lateral = wiggle * (np.sin(2 * np.pi * s / period + phase) - np.sin(phase))  # zero at ``through``
    return through[None] + s[:, None] * d[None] + lateral[:, None] * n[None]


def rect(centre: np.ndarray, angle: float, length: float, width: float) -> np.ndarray:
    """Corners [4, 2] of a rectangle (length along ``angle``)."""
    d = np.array([np.cos(angle), np.sin(angle)]) * length / 2
    n = np.array([-np.sin(angle), np.cos(angle)]) * width / 2
    return np.array([centre + d + n, centre + d - n, centre - d - n, centre - d + n])


class Occupancy:
    """The 1 wu placement grid (uint8 [H, W] of occupancy codes) with drawing and free-space tests."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.grid = np.zeros((size[1], size[0]), np.uint8)

    @staticmethod
    def _pts(poly: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(poly) * 16).astype(np.int32).reshape(-1, 1, 2)  # 4 fractional bits

    def fill(self, poly: np.ndarray, code: int) -> None:
        cv2.fillPoly(self.grid, [self._pts(poly)], code, cv2.LINE_8, 4)

    def line(self, pts: np.ndarray, width: float, code: int) -> None:
        cv2.polylines(self.grid, [self._pts(pts)], False, code, max(1, int(round(width))), cv2.LINE_8, 4)

    def disc(self, centre: np.ndarray, radius: float, code: int) -> None:
        cv2.circle(
            self.grid, tuple(int(v) for v in np.round(centre * 16)), int(radius * 16), code, -1, cv2.LINE_8, 4
        )

    def codes_in(self, poly: np.ndarray) -> np.ndarray:
        """Occupancy codes under a polygon (an empty array when it lies outside the grid)."""
        p = np.asarray(poly)
        x0, y0 = np.floor(p.min(0)).astype(int) - 1
        x1, y1 = np.ceil(p.max(0)).astype(int) + 2
        h, w = self.grid.shape
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            return np.zeros(0, np.uint8)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [self._pts(p - [x0, y0])], 1, cv2.LINE_8, 4)
        cx0, cy0 = max(x0, 0), max(y0, 0)
        sub = self.grid[cy0 : min(y1, h), cx0 : min(x1, w)]
        m = mask[cy0 - y0 : cy0 - y0 + sub.shape[0], cx0 - x0 : cx0 - x0 + sub.shape[1]]
        return sub[m > 0]

    def is_free(self, poly: np.ndarray, allowed: tuple[int, ...] = (FREE,)) -> bool:
        codes = self.codes_in(poly)
        return codes.size > 0 and bool(np.isin(codes, allowed).all())

    def code_at(self, p: np.ndarray) -> int:
        x, y = int(round(p[0])), int(round(p[1]))
        h, w = self.grid.shape
        return int(self.grid[y, x]) if 0 <= x < w and 0 <= y < h else -1


def hull(*polys: np.ndarray) -> np.ndarray:
    """Convex hull [N, 2] of the points of several polygons."""
    pts = np.concatenate([np.asarray(p, np.float32).reshape(-1, 2) for p in polys])
    return cv2.convexHull(pts).reshape(-1, 2).astype(np.float64)
