"""Training augmentation of clips: one random draw per clip, applied to every frame, label and soft target.

:class:`VideoTrainAugment` follows ``ssp.md`` §7.8 and :class:`ImageTrainAugment` §7.9 (our own OpenCV version of
the reference's albumentations pipeline). Both compose their geometry into one matrix and apply it with
:mod:`data.transforms` (conventions there); photometric and noise ops come from :mod:`data.photometric`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from data.photometric import (
    FrameOp,
    clahe_op,
    gain_lut,
    gauss_op,
    hsv_op,
    iso_op,
    jpeg_op,
    lut_op,
    sharpen_op,
    tone_lut,
    uniform,
)
from data.transforms import (
    VIDEO_SCALES,
    ClipSample,
    affine_matrix,
    apply_geometry,
    hflip_matrix,
    map_frames,
    random_square_geometry,
    scale_matrix,
    translate_matrix,
)

# data_cfg.photometric: tcseg's photometry (contrast about mid-grey, brightness x 255) or the reference's
PHOTOMETRIC_MODES = ("mid_grey", "reference")


class VideoTrainAugment:
    """Video-training augmentation, ``ssp.md`` §7.8, one draw per clip. Steps:

    1. horizontal flip, ``p_flip``;
    2. with ``p_scale``: scale by a factor from ``scales`` (output size ``round(H s) x round(W s)``), then a
       random crop back to the input ``(H, W)`` (one warp; frames/soft bilinear, labels nearest);
    3. if ``square_crop``: random ``S x S`` crop, ``S = min(H, W)`` (H for landscape frames);
    4. with ``p_photometric``, all of: contrast ``x U(1 - contrast, 1 + contrast)`` about mid-grey, brightness
       ``+ U(-brightness, brightness) * 255``, gamma ``U(gamma)``, then HSV shift: hue ``U(+-hue)`` in OpenCV
       8-bit hue units (0-179; 30 units = 60 degrees, albumentations' convention), saturation/value
       ``U(+-sat)``/``U(+-val)`` on the 0-255 scale. Same parameters for every frame.

    ``photometric="reference"`` reproduces what the reference code does with the same draws (``ssp.md`` §7.8,
    checked against albucore): contrast is a gain about 0 (``c x``, which also brightens or darkens), brightness
    adds ``b`` grey levels, not ``b * 255`` (so +-0.2 is a no-op), and the order is contrast, HSV, gamma.
    """

    def __init__(
        self,
        square_crop: bool,
        *,
        p_flip: float = 0.5,
        p_scale: float = 0.75,
        scales: Sequence[float] = VIDEO_SCALES,
        p_photometric: float = 0.3,
        contrast: float = 0.2,
        brightness: float = 0.2,
        hue: float = 30.0,
        sat: float = 20.0,
        val: float = 20.0,
        gamma: tuple[float, float] = (0.8, 1.2),
        photometric: str = "mid_grey",
    ) -> None:
        if not scales or min(scales) < 1.0:
            raise ValueError(f"scales must be >= 1 (scale up, then crop back), got {tuple(scales)}")
        if photometric not in PHOTOMETRIC_MODES:
            raise ValueError(
                f"photometric must be one of {', '.join(PHOTOMETRIC_MODES)}, got {photometric!r}"
            )
        self.photometric = photometric
        self.square_crop, self.p_flip, self.p_scale, self.scales = square_crop, p_flip, p_scale, tuple(scales)
        self.p_photometric, self.contrast, self.brightness = p_photometric, contrast, brightness
        self.hue, self.sat, self.val, self.gamma = hue, sat, val, gamma

    def __call__(self, sample: ClipSample, rng: np.random.Generator) -> ClipSample:
        return self.apply(sample, rng)[0]

    def apply(self, sample: ClipSample, rng: np.random.Generator) -> tuple[ClipSample, np.ndarray]:
        """Augment; also return the 3x3 affine source->output pixel matrix of the geometry applied (to carry
        homographies and flows through the same draw)."""
        h, w = sample.size()
        m, out_hw = np.eye(3), (h, w)
        if rng.random() < self.p_flip:
            m = hflip_matrix(w) @ m
        if rng.random() < self.p_scale:
            s = self.scales[int(rng.integers(len(self.scales)))]
            sh, sw = round(h * s), round(w * s)
            oy, ox = int(rng.integers(0, sh - h + 1)), int(rng.integers(0, sw - w + 1))
            m = translate_matrix(-ox, -oy) @ scale_matrix(sw / w, sh / h) @ m
        if self.square_crop:
            crop, out_hw = random_square_geometry(h, w, rng)
            m = crop @ m
        out = apply_geometry(sample, m, out_hw, frame_border=cv2.BORDER_REPLICATE)
        if rng.random() < self.p_photometric:
            c = 1.0 + uniform(rng, (-self.contrast, self.contrast))
            b = uniform(rng, (-self.brightness, self.brightness))
            g = uniform(rng, self.gamma)
            hsv = hsv_op(*(uniform(rng, (-r, r)) for r in (self.hue, self.sat, self.val)))
            if self.photometric == "reference":
                gain, gam = gain_lut(c, b), tone_lut(gamma=g)
                out = map_frames(out, lambda img, r: cv2.LUT(hsv(cv2.LUT(img, gain), r), gam), rng)
            else:
                lut = tone_lut(c, b, g)
                out = map_frames(out, lambda img, r: hsv(cv2.LUT(img, lut), r), rng)
        return out, m


class ImageTrainAugment:
    """Image-training augmentation, ``ssp.md`` §7.9 (own OpenCV version of the reference's albumentations
    pipeline; works on clips with one draw per clip). Steps:

    1. horizontal flip, ``p_flip``;
    2. with ``p_geometric``, one of (equal odds): perspective (each corner moved inwards by
       ``|N(0, sigma)|`` of the side, capped at 0.32, ``sigma ~ U(perspective_scale)``; the quad is stretched
       to the full frame) or shift-scale-rotate about the centre (shift ``U(+-shift)`` of the side, scale
       ``1 + U(+-scale)``, rotation ``U(+-rotate)`` degrees); borders: frames 0, labels 255, soft 0;
    3. if ``square_crop``: random ``S x S`` crop, ``S = min(H, W)`` (composed into the same warp as 1-2);
    4. with ``p_color``, one of: brightness ``+U(+-0.2)*255`` and contrast ``x U(0.8, 1.2)`` about mid-grey;
       HSV shift hue/sat/val ``U(+-20)``/``U(+-30)``/``U(+-20)`` (units as in :class:`VideoTrainAugment`);
       gamma ``U(0.8, 1.2)``; CLAHE on Lab-L, clip limit ``U(1, 4)``, 8x8 tiles;
    5. with ``p_noise``, one of: ISO-like noise (colour shift ``U(0.01, 0.05)``, intensity ``U(0.1, 0.5)``,
       see :func:`iso_op`); Gaussian noise, variance ``U(10, 50)`` levels^2; JPEG, quality
       ``randint(50, 95)``; sharpen, amount ``U(0.2, 0.5)``. Same parameters per clip; noise samples differ
       per frame.

    Colour/noise run after the crop (cheaper; they are per-pixel, except CLAHE and JPEG which are local).
    """

    def __init__(
        self,
        square_crop: bool,
        *,
        p_flip: float = 0.5,
        p_geometric: float = 0.2,
        perspective_scale: tuple[float, float] = (0.01, 0.05),
        shift: float = 0.0625,
        scale: float = 0.1,
        rotate: float = 15.0,
        p_color: float = 0.8,
        p_noise: float = 0.6,
        jpeg_quality: tuple[int, int] = (50, 95),
    ) -> None:
        self.square_crop, self.p_flip, self.p_geometric = square_crop, p_flip, p_geometric
        self.perspective_scale, self.shift, self.scale, self.rotate = perspective_scale, shift, scale, rotate
        self.p_color, self.p_noise, self.jpeg_quality = p_color, p_noise, jpeg_quality

    def _geometric(self, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < 0.5:  # perspective: random inner quad -> full frame
            sigma = uniform(rng, self.perspective_scale)
            d = np.minimum(np.abs(rng.normal(0.0, sigma, (4, 2))), 0.32) * (w, h)
            x0, y0, x1, y1 = -0.5, -0.5, w - 0.5, h - 0.5
            dst = np.float32([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            src = dst + np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * d.astype(np.float32)
            return cv2.getPerspectiveTransform(src, dst).astype(np.float64)
        a = np.deg2rad(uniform(rng, (-self.rotate, self.rotate)))
        s = 1.0 + uniform(rng, (-self.scale, self.scale))
        dx, dy = uniform(rng, (-self.shift, self.shift)) * w, uniform(rng, (-self.shift, self.shift)) * h
        cx, cy = (w - 1) / 2, (h - 1) / 2
        rot = affine_matrix(s * np.cos(a), -s * np.sin(a), 0, s * np.sin(a), s * np.cos(a), 0)
        return translate_matrix(cx + dx, cy + dy) @ rot @ translate_matrix(-cx, -cy)

    def _color(self, rng: np.random.Generator) -> FrameOp:
        kind = int(rng.integers(4))
        if kind == 0:
            b, c = uniform(rng, (-0.2, 0.2)), uniform(rng, (0.8, 1.2))
            return lut_op(tone_lut(contrast=c, brightness=b))
        if kind == 1:
            return hsv_op(uniform(rng, (-20, 20)), uniform(rng, (-30, 30)), uniform(rng, (-20, 20)))
        if kind == 2:
            return lut_op(tone_lut(gamma=uniform(rng, (0.8, 1.2))))
        return clahe_op(uniform(rng, (1.0, 4.0)), 8)

    def _noise(self, rng: np.random.Generator) -> FrameOp:
        kind = int(rng.integers(4))
        if kind == 0:
            return iso_op(uniform(rng, (0.01, 0.05)), uniform(rng, (0.1, 0.5)))
        if kind == 1:
            return gauss_op(float(np.sqrt(uniform(rng, (10.0, 50.0)))))
        if kind == 2:
            return jpeg_op(int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
        return sharpen_op(uniform(rng, (0.2, 0.5)))

    def __call__(self, sample: ClipSample, rng: np.random.Generator) -> ClipSample:
        h, w = sample.size()
        m, out_hw = np.eye(3), (h, w)
        if rng.random() < self.p_flip:
            m = hflip_matrix(w) @ m
        if rng.random() < self.p_geometric:
            m = self._geometric(h, w, rng) @ m
        if self.square_crop:
            crop, out_hw = random_square_geometry(h, w, rng)
            m = crop @ m
        out = apply_geometry(sample, m, out_hw)
        if rng.random() < self.p_color:
            out = map_frames(out, self._color(rng), rng)
        if rng.random() < self.p_noise:
            out = map_frames(out, self._noise(rng), rng)
        return out
