"""A smooth drone flight over the ground plane: one homography (world plane -> image) per frame.

Conventions. World coordinates are (X, Y) in world units (wu) on the ground plane, X right and Y down as in a
raster, and Z points *into* the ground, so that (X, Y, Z) is right-handed and a camera above the ground has
Z = -altitude. Image pixel centres are at integer coordinates. A pinhole camera with rotation R (rows = camera
axes in world coordinates) and centre C maps a ground point to ``K [r1 r2 -R C] (X, Y, 1)^T``; because the
whole static scene lies on that plane, every static pixel moves exactly by a homography between frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.synthetic.params import REFERENCE_WIDTH, SyntheticParams

FOCAL_FACTOR = 1.0  # focal length in units of the image width: horizontal field of view ~53 degrees
NOMINAL_ALTITUDE = REFERENCE_WIDTH * FOCAL_FACTOR  # wu; at this altitude and nadir, 1 wu = width/224 px


@dataclass
class Flight:
    """A camera flight of T frames, in world coordinates.

    homographies: float64 [T, 3, 3], H_t maps homogeneous world (wu) coordinates to image pixels of frame t.
    centres: float64 [T, 2], the ground point seen at the image centre (wu).
    forward: float64 [2], unit vector of the mean viewing direction on the ground (image "up").
    tilt: float64 [T], tilt from nadir (rad).
    """

    homographies: np.ndarray
    centres: np.ndarray
    forward: np.ndarray
    tilt: np.ndarray

    def shifted(self, offset: np.ndarray) -> Flight:
        """The same flight in a world frame whose origin is at ``offset`` (wu) of the current frame."""
        t = np.array([[1.0, 0.0, offset[0]], [0.0, 1.0, offset[1]], [0.0, 0.0, 1.0]])
        return Flight(self.homographies @ t, self.centres - offset, self.forward, self.tilt)

    def footprints(self, height: int, width: int) -> np.ndarray:
        """Ground quadrilaterals seen by each frame, float64 [T, 4, 2] (wu), from the image's outer corners."""
        corners = np.array(
            [[-0.5, -0.5, 1], [width - 0.5, -0.5, 1], [width - 0.5, height - 0.5, 1], [-0.5, height - 0.5, 1]]
        )
        inv = np.linalg.inv(self.homographies)  # [T,3,3]
        pts = np.einsum("tij,kj->tki", inv, corners)
        return pts[..., :2] / pts[..., 2:3]


def smooth_signal(
    rng: np.random.Generator, n: int, periods: tuple[float, float] = (30.0, 150.0)
) -> np.ndarray:
    """A smooth random signal [n] in about -1..1: two sinusoids with random periods (frames) and phases."""
    t = np.arange(n, dtype=np.float64)
    out = np.zeros(n)
    weights = rng.uniform(0.3, 1.0, 2)
    weights /= weights.sum()
    for w in weights:
        period = rng.uniform(*periods)
        out += w * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    return out


def rotation(yaw: float, tilt: float, roll: float) -> np.ndarray:
    """Camera rotation [3, 3] (rows = camera x, y, z axes in world coordinates).

    yaw turns the heading about the vertical; tilt pitches the optical axis from nadir towards the heading
    (image up = forward on the ground = (sin yaw, -cos yaw)); roll turns the image about the optical axis.
    """
    x = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    y = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
    z = np.array([0.0, 0.0, 1.0])
    y, z = np.cos(tilt) * y + np.sin(tilt) * z, np.cos(tilt) * z - np.sin(tilt) * y
    x, y = np.cos(roll) * x + np.sin(roll) * y, -np.sin(roll) * x + np.cos(roll) * y
    return np.stack([x, y, z])


def ground_homography(
    position: np.ndarray, altitude: float, rot: np.ndarray, focal: float, height: int, width: int
) -> np.ndarray:
    """Homography [3, 3] float64 from ground (X, Y, 1) to pixels for a camera above ``position`` (wu)."""
    k = np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    centre = np.array([position[0], position[1], -altitude])
    t = -rot @ centre
    h = k @ np.column_stack([rot[:, 0], rot[:, 1], t])
    return h / h[2, 2]


def plan_flight(rng: np.random.Generator, n_frames: int, params: SyntheticParams) -> Flight:
    """A smooth random flight of ``n_frames`` frames starting above the origin.

    The motion is set in pixels per frame (what a 10 fps drone video shows: ``params.speed_px`` at the image
    centre, slow yaw up to ~0.6 deg/frame, altitude (zoom) changes of well under 1 %/frame, and in half of the
    videos one smooth tilt change), and converted to ground units with the current altitude.
    """
    h_img, w_img = params.height, params.width
    focal = FOCAL_FACTOR * w_img
    n = n_frames
    alt = NOMINAL_ALTITUDE * rng.uniform(0.72, 0.95) * (1.0 + 0.06 * smooth_signal(rng, n, (40.0, 160.0)))
    speed_px = rng.uniform(*params.speed_px) * (1.0 + 0.2 * smooth_signal(rng, n))
    yaw_rate = np.deg2rad(rng.uniform(-0.35, 0.35) + 0.2 * smooth_signal(rng, n))
    yaw = rng.uniform(0, 2 * np.pi) + np.concatenate([[0.0], np.cumsum(yaw_rate[:-1])])
    # Drones mostly fly forward, sometimes sideways (crab angle between heading and flight direction).
    crab = rng.uniform(-np.pi / 2, np.pi / 2) if rng.random() < 0.25 else rng.normal(0.0, 0.15)
    max_tilt = np.deg2rad(params.max_tilt_deg)
    tilt_a = rng.uniform(min(np.deg2rad(4.0), max_tilt), max_tilt)
    tilt = np.full(n, tilt_a)
    if rng.random() < 0.5 and n > 4:  # an occasional smooth change of the gimbal tilt
        tilt_b = float(np.clip(tilt_a + rng.choice([-1, 1]) * np.deg2rad(rng.uniform(4, 10)), 0.0, max_tilt))
        start, dur = rng.uniform(-10, max(1.0, n - 10)), rng.uniform(16, 30)  # <= ~0.6 deg/frame
        u = np.clip((np.arange(n) - start) / dur, 0.0, 1.0)
        tilt = tilt_a + (tilt_b - tilt_a) * (3 * u**2 - 2 * u**3)  # smoothstep: no jerk at either end
    roll = np.deg2rad(1.5) * smooth_signal(rng, n)

    pos = np.zeros((n, 2))
    for t in range(1, n):
        heading = yaw[t - 1] + crab
        direction = np.array([np.sin(heading), -np.cos(heading)])
        pos[t] = pos[t - 1] + direction * speed_px[t - 1] * alt[t - 1] / focal  # px/frame -> wu/frame
    homs = np.empty((n, 3, 3))
    centres = np.empty((n, 2))
    for t in range(n):
        rot = rotation(yaw[t], tilt[t], roll[t])
        homs[t] = ground_homography(pos[t], alt[t], rot, focal, h_img, w_img)
        c = np.linalg.solve(homs[t], np.array([(w_img - 1) / 2.0, (h_img - 1) / 2.0, 1.0]))
        centres[t] = c[:2] / c[2]
    mean_yaw = float(np.arctan2(np.sin(yaw).mean(), np.cos(yaw).mean()))
    forward = np.array([np.sin(mean_yaw), -np.cos(mean_yaw)])
    return Flight(homs, centres, forward, tilt)


def relative_homographies(homs: np.ndarray) -> np.ndarray:
    """Frame-to-frame homographies float64 [T, 3, 3] of a clip: entry t = H_{t-1 -> t}, entry 0 = identity.

    ``homs`` are the world -> image homographies of the clip's frames; H_{t-1 -> t} = H_t H_{t-1}^{-1},
    normalised so that its [2, 2] entry is 1.
    """
    out = np.empty_like(homs)
    out[0] = np.eye(3)
    for t in range(1, len(homs)):
        h = homs[t] @ np.linalg.inv(homs[t - 1])
        out[t] = h / h[2, 2]
    return out
