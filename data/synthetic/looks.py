"""The looks of the synthetic stream (:mod:`data.synthetic.stream`): deterministic photometric transforms of a
rendered RGB frame that stand for a domain (daylight, overcast, dusk, snow); the labels do not change."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _look_day(rgb: np.ndarray) -> np.ndarray:
    """Daylight: the frame as rendered."""
    return rgb


def _look_dusk(rgb: np.ndarray) -> np.ndarray:
    """Low sun: about half the light, a blue cast, and a bluish haze that lifts the shadows and flattens contrast."""
    x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    x = 0.75 * x * np.array([0.45, 0.5, 0.72], np.float32) + 0.25 * np.array([0.2, 0.25, 0.42], np.float32)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _look_winter(rgb: np.ndarray) -> np.ndarray:
    """Snow: vegetation (green-dominant pixels) turns white, everything else is desaturated and cooled."""
    x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    green = np.clip((x[..., 1] - np.maximum(x[..., 0], x[..., 2])) * 8.0, 0.0, 1.0)[..., None]
    lum = x.mean(axis=2, keepdims=True)
    x = lum + 0.35 * (x - lum)
    x = x + 0.85 * green * (np.array([0.93, 0.95, 0.98], np.float32) - x)
    x = 0.85 * x + 0.15 * np.array([0.85, 0.9, 1.0], np.float32)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _look_overcast(rgb: np.ndarray) -> np.ndarray:
    """Overcast: flatter light (contrast x0.7 about mid-grey), a little darker, duller colours (saturation x0.6) and
    a cool cast; within the photometric range of the image models' training augmentation, so a teacher trained on
    daylight still labels it (dusk and winter are beyond it)."""
    x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    lum = x.mean(axis=2, keepdims=True)
    x = lum + 0.6 * (x - lum)
    x = 0.5 + 0.7 * (x - 0.5) - 0.06
    x = x * np.array([0.94, 0.98, 1.06], np.float32)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


# name -> function of a uint8 RGB frame [H, W, 3] -> uint8 RGB [H, W, 3] (deterministic: no randomness)
LOOKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"day": _look_day, "dusk": _look_dusk, "winter": _look_winter,
                                                         "overcast": _look_overcast}  # fmt: skip
