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
  labels 255 (ignore, like raw 0 in the reference), soft targets 0. In ``data.augment.VideoTrainAugment`` the
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
def affine_matrix(a: float, b: float, c: float, d: float, e: float, f: float) -> np.ndarray:
    return np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]])


def translate_matrix(tx: float, ty: float) -> np.ndarray:
    return affine_matrix(1, 0, tx, 0, 1, ty)


def scale_matrix(sx: float, sy: float) -> np.ndarray:
    """Resize by (sx, sy) with pixel-centre alignment, as cv2.resize: x' = sx (x + 0.5) - 0.5."""
    return affine_matrix(sx, 0, 0.5 * sx - 0.5, 0, sy, 0.5 * sy - 0.5)


def hflip_matrix(w: int) -> np.ndarray:
    return affine_matrix(-1, 0, w - 1, 0, 1, 0)


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
        m = np.linalg.inv(scale_matrix(ow / s_out[1], oh / s_out[0])) @ m @ scale_matrix(fw / w, fh / h)
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


def apply_geometry(
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


def random_square_geometry(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    side = min(h, w)
    oy, ox = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return translate_matrix(-ox, -oy), (side, side)


def square_crop_geometry(
    h: int, w: int, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Source->output matrix and output size of the ``S x S`` crop, ``S = min(H, W)``: a random window with
    ``rng``, else the centred one (callers that must transform geometry, e.g. homographies, need ``m``)."""
    if rng is not None:
        return random_square_geometry(h, w, rng)
    side = min(h, w)
    return translate_matrix(-((w - side) // 2), -((h - side) // 2)), (side, side)


def center_square_crop(sample: ClipSample) -> ClipSample:
    """Centre ``S x S`` crop, ``S = min(H, W)`` (training-time validation of ``square_crop`` configs)."""
    return apply_geometry(sample, *square_crop_geometry(*sample.size()))


def random_square_crop(sample: ClipSample, rng: np.random.Generator) -> ClipSample:
    """Random ``S x S`` crop, ``S = min(H, W)``, the same window for every frame (``square_crop`` without
    other augmentation)."""
    return apply_geometry(sample, *square_crop_geometry(*sample.size(), rng))


def map_frames(sample: ClipSample, op: FrameOp, rng: np.random.Generator) -> ClipSample:
    return ClipSample([op(f, rng) for f in sample.frames], sample.labels, sample.soft)


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
