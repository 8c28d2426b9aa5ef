"""Synthetic test images shared by the provider tests."""

from __future__ import annotations

import cv2
import numpy as np
import torch


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture with some fine detail, ``[h,w,3]`` uint8."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.random((h // 4 + 1, w // 4 + 1, 3), dtype=np.float32), (w, h), cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.random((h, w, 3), dtype=np.float32), (3, 3), 0)
    return np.clip((0.7 * coarse + 0.3 * fine) * 255, 0, 255).astype(np.uint8)


def to_tensor(*imgs: np.ndarray) -> torch.Tensor:
    """``[h,w,3]`` uint8 images -> ``[B,3,h,w]`` float in [0,1]."""
    return torch.stack([torch.from_numpy(i).permute(2, 0, 1) for i in imgs]).float() / 255
