"""Joint frame/label/soft-target transforms for clips, with one random draw per clip (``ssp.md`` §7.7-7.9).

Conventions
-----------
* frames: ``(H, W, 3)`` uint8 **RGB**; labels: ``(H, W)`` uint8 training ids, 255 = ignore, or ``None``;
  soft targets (teacher logits / soft GT): ``(K, h, w)`` float32 or float16, or ``None``. A soft target may be
  stored at a lower resolution than the frames: the geometry is mapped to its own pixel grid.
* Every geometric op of a clip is composed into one 3x3 matrix (source pixel -> output pixel, pixel centres at
  integer coordinates, OpenCV convention) and applied once per array, so frames, labels and soft targets of
  every frame stay aligned. Pure flips and integer crops are done by slicing (exact, and fast).
* Interpolation: frames bilinear, hard labels nearest, soft targets bilinear. Border values: frames 0,
  labels 255 (ignore, like raw 0 in the reference), soft targets 0. In :class:`VideoTrainAugment` the
  scaled-and-cropped window always lies inside the image, so frames/soft use replicated borders there: this
  only affects the half-pixel rim, exactly as ``cv2.resize`` + crop would.
* Photometric and noise ops touch frames only, with the same parameters for every frame of the clip. Noise
  *samples* (Gaussian, ISO-like) are drawn independently per frame, as real sensor noise is.
* Nothing is modified in place; every output array is a new array. Everything is deterministic given the
  ``np.random.Generator`` passed to ``__call__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from data.catalog import IGNORE_INDEX
from data.photometric import (
    FrameOp,
    clahe_op,
    gauss_op,
    hsv_op,
    iso_op,
    jpeg_op,
    lut_op,
    sharpen_op,
    tone_lut,
    uniform,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, 0-1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)
VIDEO_SCALES = (1.10, 1.15, 1.20, 1.25, 1.30, 1.35, 1.40)

_TORCH_DTYPE = {np.float32: torch.float32, np.float16: torch.float16}


@dataclass
class ClipSample:
    """T frames ``(H,W,3)`` uint8 RGB; T labels ``(H,W)`` uint8 or None; optional T soft ``(K,h,w)``."""

    frames: list[np.ndarray]
    labels: list[np.ndarray | None]
    soft: list[np.ndarray | None] | None = None

    def size(self) -> tuple[int, int]:
        """Check shapes and dtypes (ValueError if wrong); return the common frame size ``(H, W)``."""
        if not self.frames:
            raise ValueError("ClipSample has no frames")
        h, w = self.frames[0].shape[:2]
        for f in self.frames:
            if f.dtype != np.uint8 or f.ndim != 3 or f.shape != (h, w, 3):
                raise ValueError(f"frames must all be ({h},{w},3) uint8, got {f.shape} {f.dtype}")
        if len(self.labels) != len(self.frames):
            raise ValueError(f"{len(self.labels)} labels for {len(self.frames)} frames")
        for lb in self.labels:
            if lb is not None and (lb.dtype != np.uint8 or lb.shape != (h, w)):
                raise ValueError(f"labels must be ({h},{w}) uint8 or None, got {lb.shape} {lb.dtype}")
        if self.soft is not None and len(self.soft) != len(self.frames):
            raise ValueError(f"{len(self.soft)} soft targets for {len(self.frames)} frames")
        for s in self.soft or []:
            if s is not None and (s.ndim != 3 or s.dtype not in (np.float32, np.float16)):
                raise ValueError(f"soft targets must be (K,h,w) float32/float16, got {s.shape} {s.dtype}")
        return h, w


# ----------------------------------------------------------------------------------------------- resizing
def resize_frame(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize an ``(H,W,C)`` image to ``size_hw``: bilinear (``INTER_LINEAR``, pixel-centre aligned); when
    shrinking by more than 2x (both axes shrink, one by > 2x) ``INTER_AREA`` instead, to avoid aliasing that
    2-tap bilinear would cause. Returns a new array of the input dtype."""
    h, w = size_hw
    ih, iw = img.shape[:2]
    if (ih, iw) == (h, w):
        return img.copy()
    area = ih >= h and iw >= w and max(ih / h, iw / w) > 2.0
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)


def resize_label(lbl: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize an ``(H,W)`` label map with nearest neighbour. ``INTER_NEAREST_EXACT`` samples at pixel centres,
    i.e. on the same grid as :func:`resize_frame` (plain ``INTER_NEAREST`` is shifted by half a pixel)."""
    if lbl.shape[:2] == tuple(size_hw):
        return lbl.copy()
    return cv2.resize(lbl, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST_EXACT)


def resize_soft(soft: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize ``(K,H,W)`` soft targets to ``(K,h,w)``: bilinear (half-pixel centres), antialiased when
    shrinking (``torch.nn.functional.interpolate(..., antialias=True)``, the PIL-style triangle filter).
    Keeps the dtype (float16 is computed in float32)."""
    if soft.shape[1:] == tuple(size_hw):
        return soft.copy()
    x = torch.from_numpy(np.ascontiguousarray(soft)).float()[None]
    y = torch.nn.functional.interpolate(
        x, size=tuple(size_hw), mode="bilinear", align_corners=False, antialias=True
    )[0]
    return y.to(_TORCH_DTYPE[soft.dtype.type]).numpy()


# ----------------------------------------------------------------------------------------------- geometry
def _mat(a: float, b: float, c: float, d: float, e: float, f: float) -> np.ndarray:
    return np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]])


def _translate(tx: float, ty: float) -> np.ndarray:
    return _mat(1, 0, tx, 0, 1, ty)


def _scale(sx: float, sy: float) -> np.ndarray:
    """Resize by (sx, sy) with pixel-centre alignment, as cv2.resize: x' = sx (x + 0.5) - 0.5."""
    return _mat(sx, 0, 0.5 * sx - 0.5, 0, sy, 0.5 * sy - 0.5)


def _hflip(w: int) -> np.ndarray:
    return _mat(-1, 0, w - 1, 0, 1, 0)


def _integer_slices(
    m: np.ndarray, in_hw: tuple[int, int], out_hw: tuple[int, int]
) -> tuple[slice, slice] | None:
    """If ``m`` is a flip/integer translation whose output window lies inside the input, the (rows, cols)
    slices that implement it; else None."""
    if abs(m[0, 1]) > 1e-9 or abs(m[1, 0]) > 1e-9 or np.abs(m[2] - (0, 0, 1)).max() > 1e-9:
        return None
    out: list[slice] = []
    for a, t, n_in, n_out in (
        (m[1, 1], m[1, 2], in_hw[0], out_hw[0]),
        (m[0, 0], m[0, 2], in_hw[1], out_hw[1]),
    ):
        ti = int(round(t))
        if abs(t - ti) > 1e-6:
            return None
        if abs(a - 1) < 1e-9 and 0 <= -ti and -ti + n_out <= n_in:  # src = dst - t
            out.append(slice(-ti, -ti + n_out))
        elif abs(a + 1) < 1e-9 and ti <= n_in - 1 and ti - n_out + 1 >= 0:  # src = t - dst
            out.append(slice(ti, ti - n_out if ti - n_out >= 0 else None, -1))
        else:
            return None
    return out[0], out[1]


def _warp(
    img: np.ndarray, m: np.ndarray, out_hw: tuple[int, int], interp: int, border: int, value: float
) -> np.ndarray:
    """Warp an ``(H,W)`` or ``(H,W,C)`` array (C <= 512) with the source->output matrix ``m``."""
    sl = _integer_slices(m, img.shape[:2], out_hw)
    if sl is not None:
        return img[sl].copy()
    inv = np.linalg.inv(m)
    src = np.ascontiguousarray(img)
    dsize, flags = (out_hw[1], out_hw[0]), interp | cv2.WARP_INVERSE_MAP
    if abs(inv[2, 0]) < 1e-12 and abs(inv[2, 1]) < 1e-12:
        out = cv2.warpAffine(
            src, inv[:2] / inv[2, 2], dsize, flags=flags, borderMode=border, borderValue=value
        )
    else:
        out = cv2.warpPerspective(src, inv, dsize, flags=flags, borderMode=border, borderValue=value)
    return out.reshape(out_hw + img.shape[2:])


def _warp_soft(
    soft: np.ndarray, m: np.ndarray, frame_hw: tuple[int, int], out_hw: tuple[int, int], border: int
) -> np.ndarray:
    """Warp ``(K,h,w)`` soft targets; ``m``/``out_hw`` are in frame pixels, mapped here to the soft grid."""
    k, h, w = soft.shape
    (fh, fw), (oh, ow) = frame_hw, out_hw
    if (h, w) != (fh, fw):  # soft px -> frame px, warp, frame px -> soft px
        s_out = (max(1, round(oh * h / fh)), max(1, round(ow * w / fw)))
        m = np.linalg.inv(_scale(ow / s_out[1], oh / s_out[0])) @ m @ _scale(fw / w, fh / h)
        out_hw = s_out
    sl = _integer_slices(m, (h, w), out_hw)
    if sl is not None:
        return soft[:, sl[0], sl[1]].copy()
    hwk = np.ascontiguousarray(soft.transpose(1, 2, 0), dtype=np.float32)
    parts = [
        _warp(hwk[..., i : i + 512], m, out_hw, cv2.INTER_LINEAR, border, 0.0).reshape(out_hw + (-1,))
        for i in range(0, k, 512)
    ]
    out = torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2))
    # torch: the float16 cast and the HWK -> KHW copy are several times faster than numpy's
    return out.permute(2, 0, 1).to(_TORCH_DTYPE[soft.dtype.type]).contiguous().numpy()


def _apply_geometry(
    sample: ClipSample, m: np.ndarray, out_hw: tuple[int, int], frame_border: int = cv2.BORDER_CONSTANT
) -> ClipSample:
    """Apply one source->output matrix to every frame, label and soft target of the clip."""
    hw = sample.frames[0].shape[:2]
    frames = [_warp(f, m, out_hw, cv2.INTER_LINEAR, frame_border, 0) for f in sample.frames]
    labels = [
        None if lb is None else _warp(lb, m, out_hw, cv2.INTER_NEAREST, cv2.BORDER_CONSTANT, IGNORE_INDEX)
        for lb in sample.labels
    ]
    soft = (
        None
        if sample.soft is None
        else [None if s is None else _warp_soft(s, m, hw, out_hw, frame_border) for s in sample.soft]
    )
    return ClipSample(frames, labels, soft)


def _random_square(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    side = min(h, w)
    oy, ox = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return _translate(-ox, -oy), (side, side)


def square_crop_geometry(
    h: int, w: int, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Source->output matrix and output size of the ``S x S`` crop, ``S = min(H, W)``: a random window with
    ``rng``, else the centred one (callers that must transform geometry, e.g. homographies, need ``m``)."""
    if rng is not None:
        return _random_square(h, w, rng)
    side = min(h, w)
    return _translate(-((w - side) // 2), -((h - side) // 2)), (side, side)


def center_square_crop(sample: ClipSample) -> ClipSample:
    """Centre ``S x S`` crop, ``S = min(H, W)`` (training-time validation of ``square_crop`` configs)."""
    return _apply_geometry(sample, *square_crop_geometry(*sample.size()))


def random_square_crop(sample: ClipSample, rng: np.random.Generator) -> ClipSample:
    """Random ``S x S`` crop, ``S = min(H, W)``, the same window for every frame (``square_crop`` without
    other augmentation)."""
    return _apply_geometry(sample, *square_crop_geometry(*sample.size(), rng))


def map_frames(sample: ClipSample, op: FrameOp, rng: np.random.Generator) -> ClipSample:
    return ClipSample([op(f, rng) for f in sample.frames], sample.labels, sample.soft)


# --------------------------------------------------------------------------------------------- augments
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
    ) -> None:
        if not scales or min(scales) < 1.0:
            raise ValueError(f"scales must be >= 1 (scale up, then crop back), got {tuple(scales)}")
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
            m = _hflip(w) @ m
        if rng.random() < self.p_scale:
            s = self.scales[int(rng.integers(len(self.scales)))]
            sh, sw = round(h * s), round(w * s)
            oy, ox = int(rng.integers(0, sh - h + 1)), int(rng.integers(0, sw - w + 1))
            m = _translate(-ox, -oy) @ _scale(sw / w, sh / h) @ m
        if self.square_crop:
            crop, out_hw = _random_square(h, w, rng)
            m = crop @ m
        out = _apply_geometry(sample, m, out_hw, frame_border=cv2.BORDER_REPLICATE)
        if rng.random() < self.p_photometric:
            c = 1.0 + uniform(rng, (-self.contrast, self.contrast))
            b = uniform(rng, (-self.brightness, self.brightness))
            lut = tone_lut(c, b, uniform(rng, self.gamma))
            hsv = hsv_op(*(uniform(rng, (-r, r)) for r in (self.hue, self.sat, self.val)))
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
        rot = _mat(s * np.cos(a), -s * np.sin(a), 0, s * np.sin(a), s * np.cos(a), 0)
        return _translate(cx + dx, cy + dy) @ rot @ _translate(-cx, -cy)

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
            m = _hflip(w) @ m
        if rng.random() < self.p_geometric:
            m = self._geometric(h, w, rng) @ m
        if self.square_crop:
            crop, out_hw = _random_square(h, w, rng)
            m = crop @ m
        out = _apply_geometry(sample, m, out_hw)
        if rng.random() < self.p_color:
            out = map_frames(out, self._color(rng), rng)
        if rng.random() < self.p_noise:
            out = map_frames(out, self._noise(rng), rng)
        return out


# ---------------------------------------------------------------------------------------------- tensors
def to_tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """T frames ``(H,W,3)`` uint8 RGB -> ``[T,3,H,W]`` float32, ImageNet-normalised, contiguous."""
    arr = np.stack([np.asarray(f) for f in frames])
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected T frames (H,W,3) uint8, got {arr.shape} {arr.dtype}")
    # NumPy, not torch: in data-loader workers a few tiny torch ops cost milliseconds of thread hand-off each.
    scale = np.float32(1.0 / 255.0) / np.asarray(IMAGENET_STD, np.float32)
    shift = np.asarray(IMAGENET_MEAN, np.float32) / np.asarray(IMAGENET_STD, np.float32)
    x = arr.astype(np.float32) * scale - shift  # (x/255 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse ImageNet normalisation of ``[..., 3, H, W]``: RGB in [0, 1] (clamped), same dtype/device."""
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"expected [..., 3, H, W], got {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp_(0.0, 1.0)
