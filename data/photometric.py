"""Photometric and sensor-noise ops on frames (``ssp.md`` §7.8/7.9), used by :mod:`data.transforms`.

Each ``*_op`` returns a :data:`FrameOp`: ``(H, W, 3)`` uint8 RGB -> ``(H, W, 3)`` uint8, given a generator for
per-frame noise samples. The caller draws the parameters once per clip, so every frame of a clip gets the same
photometric change; only noise *samples* differ per frame, as real sensor noise does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

FrameOp = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # (H,W,3) uint8 -> (H,W,3) uint8


def tone_lut(contrast: float = 1.0, brightness: float = 0.0, gamma: float = 1.0) -> np.ndarray:
    """256-entry uint8 LUT: contrast about mid-grey, + brightness * 255, clip, then gamma (255 (x/255)^g)."""
    y = np.clip((np.arange(256.0) - 127.5) * contrast + 127.5 + 255.0 * brightness, 0.0, 255.0)
    y = 255.0 * (y / 255.0) ** gamma
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def gain_lut(alpha: float, beta: float) -> np.ndarray:
    """256-entry uint8 LUT ``alpha * x + beta`` (clipped, rounded): the reference's ``multiply_add`` on uint8, a
    contrast gain about 0 (not mid-grey) and an offset in grey levels (``ssp.md`` §7.8)."""
    y = np.clip(np.arange(256.0) * alpha + beta, 0.0, 255.0)
    return np.rint(y).astype(np.uint8)


def lut_op(lut: np.ndarray) -> FrameOp:
    return lambda img, rng: cv2.LUT(img, lut)


def hsv_op(dh: float, ds: float, dv: float) -> FrameOp:
    """Shift hue by ``dh`` OpenCV 8-bit hue units (0-179, 1 unit = 2 degrees, wraps), saturation and value by
    ``ds``/``dv`` on the 0-255 scale (clipped)."""
    if round(dh) == round(ds) == round(dv) == 0:  # identity: skip the lossy uint8 HSV round trip
        return lambda img, rng: img.copy()
    x = np.arange(256.0)
    lut = (
        np.stack(
            [
                np.mod(np.rint(x + dh), 180),
                np.clip(np.rint(x + ds), 0, 255),
                np.clip(np.rint(x + dv), 0, 255),
            ],
            axis=-1,
        )
        .astype(np.uint8)
        .reshape(256, 1, 3)
    )
    return lambda img, rng: cv2.cvtColor(
        cv2.LUT(cv2.cvtColor(img, cv2.COLOR_RGB2HSV), lut), cv2.COLOR_HSV2RGB
    )


def clahe_op(clip_limit: float, tiles: int) -> FrameOp:
    """CLAHE on the L channel of CIE-Lab."""
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))

    def op(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)

    return op


def to_uint8(x: np.ndarray) -> np.ndarray:
    np.clip(x, 0.0, 255.0, out=x)
    return np.rint(x, out=x).astype(np.uint8)


def gauss_op(std: float) -> FrameOp:
    """Additive i.i.d. Gaussian noise, ``std`` in 0-255 levels, per pixel and channel, new noise per frame."""

    def op(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = rng.standard_normal(img.shape, dtype=np.float32)
        n *= std
        n += img
        return to_uint8(n)

    return op


LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def iso_op(color_shift: float, intensity: float) -> FrameOp:
    """ISO-like sensor noise (own model, new noise per frame): luminance shot noise with std
    ``25 * intensity * sqrt(Y/255)`` levels (Y = luma), plus luma-free chroma noise of std
    ``128 * color_shift`` levels drawn at half resolution and upsampled (blotchy, like real chroma noise)."""

    def op(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        lum = rng.standard_normal((h, w), dtype=np.float32) * np.sqrt(gray * (625.0 * intensity**2 / 255.0))
        c = rng.standard_normal(((h + 1) // 2, (w + 1) // 2, 3), dtype=np.float32) * (128.0 * color_shift)
        c -= (c @ LUMA)[..., None]
        out = img.astype(np.float32)
        out += lum[..., None]
        out += cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR)
        return to_uint8(out)

    return op


def jpeg_op(quality: int) -> FrameOp:
    """JPEG encode/decode round trip at ``quality`` (0-100), in BGR order so that chroma is computed right."""

    def op(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    return op


def sharpen_op(amount: float) -> FrameOp:
    """3x3 sharpening ``identity + amount * (8 identity - ones)`` (zero-sum high-pass keeps brightness)."""
    k = -amount * np.ones((3, 3), np.float32)
    k[1, 1] = 1.0 + 8.0 * amount
    return lambda img, rng: cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT_101)


def uniform(rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))
