"""Pictures: colour maps, overlays and side-by-side panels (uint8 RGB numpy arrays)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from config.errors import writing
from data.catalog import IGNORE_INDEX, DatasetInfo


def overlay(rgb: np.ndarray, ids: np.ndarray, info: DatasetInfo, alpha: float = 0.5) -> np.ndarray:
    """Frame (H,W,3) blended with the class colours of ``ids`` (H,W); ignored pixels keep the frame."""
    color = info.colorize(ids).astype(np.float32)
    out = rgb.astype(np.float32) * (1 - alpha) + color * alpha
    keep = ids == IGNORE_INDEX
    out[keep] = rgb[keep]
    return out.round().astype(np.uint8)


def panel(images: list[np.ndarray], titles: list[str] | None = None, gap: int = 4) -> np.ndarray:
    """Images of equal height side by side, with optional titles drawn on a strip above."""
    h = images[0].shape[0]
    parts: list[np.ndarray] = []
    for i, img in enumerate(images):
        img = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        if img.shape[0] != h:
            img = cv2.resize(
                img, (round(img.shape[1] * h / img.shape[0]), h), interpolation=cv2.INTER_NEAREST
            )
        if titles:
            strip = np.full((max(14, h // 12), img.shape[1], 3), 255, np.uint8)
            scale = strip.shape[0] / 30
            cv2.putText(
                strip, titles[i], (2, strip.shape[0] - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1
            )
            img = np.concatenate([strip, img], axis=0)
        parts.append(img)
        if i < len(images) - 1:
            parts.append(np.full((parts[-1].shape[0], gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def write_png(path: str | Path, rgb_or_ids: np.ndarray) -> None:
    """Write an RGB image (H,W,3) or an id map (H,W) as PNG, creating folders.

    Encoded here and written by Python, not ``cv2.imwrite``: that only returns False, without the cause (a
    read-only folder, a full disk), which then becomes one :class:`~config.errors.OutputError` line."""
    path = Path(path)
    img = rgb_or_ids if rgb_or_ids.ndim == 2 else cv2.cvtColor(rgb_or_ids, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"cannot encode an array of shape {rgb_or_ids.shape} {rgb_or_ids.dtype} as PNG")
    with writing(path, len(buf)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.tobytes())
