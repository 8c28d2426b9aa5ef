"""Pictures of optical flow and of where the flow-consistency loss acts (``other_methods.md`` §1.11).

:func:`flow_to_rgb` colours a flow field by direction (hue) and magnitude (brightness), the usual optical-flow
colour wheel; :func:`weight_to_rgb` shows a non-negative map (the FCL weight map) on a dark-to-bright ramp.
Both return ``[H,W,3]`` uint8 RGB, ready for a PNG or TensorBoard.
"""

from __future__ import annotations

import cv2
import numpy as np


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """``flow`` [2,H,W] (x, y in pixels) -> RGB [H,W,3] uint8: hue = direction, brightness = magnitude up to
    ``max_magnitude`` (default: the field's largest), full saturation; zero flow is black."""
    fx, fy = np.asarray(flow[0], np.float32), np.asarray(flow[1], np.float32)
    mag, ang = cv2.cartToPolar(fx, fy, angleInDegrees=True)
    top = float(max_magnitude) if max_magnitude else float(mag.max())
    hsv = np.zeros((*fx.shape, 3), np.uint8)
    hsv[..., 0] = (ang / 2).astype(np.uint8)  # OpenCV hue is 0..179
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / top * 255, 0, 255).astype(np.uint8) if top > 0 else 0
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def weight_to_rgb(weight: np.ndarray, max_value: float | None = None) -> np.ndarray:
    """``weight`` [H,W] >= 0 -> RGB [H,W,3] uint8 on the inferno ramp (0 near black), scaled to ``max_value`` (default:
    the map's largest value)."""
    w = np.asarray(weight, np.float32)
    top = float(max_value) if max_value else float(w.max())
    grey = np.clip(w / top * 255, 0, 255).astype(np.uint8) if top > 0 else np.zeros(w.shape, np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
