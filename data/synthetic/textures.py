"""Procedural texture primitives: smooth value noise, fractal noise, stripes, colour jitter.

All images are float32; a "map" is [H, W] and an "image" is [H, W, 3] RGB in 0..1. Feature sizes are given in
raster pixels. Every random draw comes from the ``np.random.Generator`` passed in, so a texture depends only on
that generator's state (determinism does not depend on how many processes generate videos).
"""

from __future__ import annotations

import cv2
import numpy as np

RGBf = tuple[float, float, float]


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth noise [H, W] float32 with features about ``cell`` px wide, zero mean, std about 1.

    A coarse grid of normal draws is upsampled bicubically; bicubic (rather than linear) avoids the visible
    diamond artefacts of bilinear value noise. For ``cell`` < 1.5 px plain white noise is returned.
    """
    h, w = shape
    if cell < 1.5:
        return rng.standard_normal((h, w), dtype=np.float32)
    gh, gw = int(np.ceil(h / cell)) + 3, int(np.ceil(w / cell)) + 3
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    big = cv2.resize(grid, (int(round(gw * cell)), int(round(gh * cell))), interpolation=cv2.INTER_CUBIC)
    off = int(cell)  # skip the first cell: the upsampled border is distorted by the border extrapolation
    out = big[off : off + h, off : off + w]
    return out * np.float32(1.6)  # bicubic-interpolated unit normals have std ~0.6; bring it back to ~1


def fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], cells: tuple[float, ...], amps: tuple[float, ...]
) -> np.ndarray:
    """Sum of :func:`value_noise` octaves [H, W] float32 (``cells`` and ``amps`` pair up)."""
    out = np.zeros(shape, np.float32)
    for cell, amp in zip(cells, amps, strict=True):
        if amp:
            out += np.float32(amp) * value_noise(rng, shape, cell)
    return out


def coords(shape: tuple[int, int], origin: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinate maps (x [H, W], y [H, W]) float32, offset by ``origin`` = (x0, y0)."""
    h, w = shape
    x = np.arange(w, dtype=np.float32)[None, :] + np.float32(origin[0])
    y = np.arange(h, dtype=np.float32)[:, None] + np.float32(origin[1])
    return np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w))


def stripes(
    shape: tuple[int, int],
    period: float,
    angle: float,
    phase: float = 0.0,
    origin: tuple[float, float] = (0, 0),
) -> np.ndarray:
    """Sinusoidal stripes [H, W] float32 in -1..1, ``period`` px, crests perpendicular to ``angle`` (rad).

    ``origin`` is the ROI's top-left in the full raster, so stripes stay continuous across ROIs.
    """
    x, y = coords(shape, origin)
    u = x * np.float32(np.cos(angle)) + y * np.float32(np.sin(angle))
    return np.sin(u * np.float32(2 * np.pi / period) + np.float32(phase)).astype(np.float32)


def jitter_color(
    rng: np.random.Generator, base: RGBf, amount: float = 0.08, gain: tuple[float, float] = (0.9, 1.1)
) -> np.ndarray:
    """A colour [3] float32 near ``base``: per-channel offsets (hue/saturation shifts) and a brightness gain."""
    c = np.asarray(base, np.float32) + rng.normal(0.0, amount, 3).astype(np.float32)
    c *= np.float32(rng.uniform(*gain))
    return np.clip(c, 0.02, 0.98).astype(np.float32)


def pick(rng: np.random.Generator, options: list[RGBf], weights: list[float] | None = None) -> RGBf:
    """One of ``options`` (optionally weighted)."""
    p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
    return options[int(rng.choice(len(options), p=p))]


def shade(color: np.ndarray, modulation: np.ndarray) -> np.ndarray:
    """Colour [3] times (1 + modulation [H, W]) -> image [H, W, 3] float32 (texture as brightness modulation)."""
    return color[None, None, :] * (1.0 + modulation[..., None]).astype(np.float32)


def blend_into(dst: np.ndarray, src: np.ndarray, alpha: np.ndarray) -> None:
    """In place: ``dst = dst * (1 - alpha) + src * alpha`` for images [H, W, 3] and alpha [H, W] in 0..1."""
    a = alpha[..., None].astype(np.float32)
    dst *= 1.0 - a
    dst += src * a


# Base colours (RGB 0..1) of the materials; each world draws its own jittered variants. Hues of vegetation and
# tree overlap on purpose, roofs span most colours, and water can be grey-green, so that colour alone does not
# decide the class.
VEGETATION = [
    (0.36, 0.48, 0.24),
    (0.28, 0.42, 0.20),
    (0.52, 0.52, 0.34),
    (0.42, 0.48, 0.28),
    (0.45, 0.45, 0.30),
]
SOIL = [(0.45, 0.37, 0.27), (0.52, 0.45, 0.34), (0.38, 0.32, 0.24)]
TREE = [(0.19, 0.32, 0.14), (0.24, 0.36, 0.17), (0.30, 0.40, 0.20), (0.17, 0.27, 0.15), (0.40, 0.38, 0.18)]
ASPHALT = [(0.36, 0.36, 0.38), (0.28, 0.28, 0.30), (0.46, 0.45, 0.44), (0.40, 0.39, 0.37)]
PAVING = [(0.62, 0.60, 0.57), (0.55, 0.52, 0.50), (0.66, 0.58, 0.50)]
WATER = [(0.12, 0.22, 0.34), (0.12, 0.28, 0.30), (0.17, 0.25, 0.23), (0.09, 0.17, 0.28)]
ROOF = [
    (0.62, 0.30, 0.20), (0.47, 0.28, 0.21), (0.30, 0.29, 0.30), (0.64, 0.63, 0.60),
    (0.80, 0.78, 0.72), (0.55, 0.25, 0.22), (0.40, 0.44, 0.50), (0.52, 0.40, 0.32),
]  # fmt: skip
FACADE = [(0.75, 0.68, 0.55), (0.82, 0.82, 0.80), (0.55, 0.55, 0.55), (0.55, 0.32, 0.25), (0.68, 0.62, 0.52)]
CLUTTER = [(0.50, 0.42, 0.32), (0.56, 0.54, 0.50), (0.44, 0.40, 0.36), (0.60, 0.50, 0.38)]
VEHICLE = [
    (0.90, 0.90, 0.90), (0.08, 0.08, 0.09), (0.62, 0.63, 0.65), (0.38, 0.38, 0.40), (0.70, 0.10, 0.10),
    (0.12, 0.22, 0.55), (0.15, 0.32, 0.20), (0.85, 0.70, 0.15), (0.45, 0.25, 0.15),
]  # fmt: skip
VEHICLE_W = [0.22, 0.15, 0.15, 0.08, 0.12, 0.12, 0.06, 0.05, 0.05]
CLOTHES = [
    (0.85, 0.15, 0.15), (0.15, 0.25, 0.70), (0.90, 0.90, 0.85), (0.10, 0.10, 0.12), (0.90, 0.75, 0.10),
    (0.20, 0.55, 0.25), (0.60, 0.20, 0.60), (0.95, 0.45, 0.10), (0.35, 0.30, 0.25),
]  # fmt: skip
HAIR = [(0.10, 0.08, 0.06), (0.30, 0.20, 0.12), (0.55, 0.45, 0.30), (0.75, 0.70, 0.65)]
