"""Weight-free CPU flow from OpenCV: DIS (``dis``) and Farneback (``farneback``), ``ecosystem.md`` §3.1.

Both run per sample on grayscale uint8 frames (``cv2.COLOR_RGB2GRAY`` of the rounded [0,1] RGB input) and return
the flow on the first frame's pixels pointing into the second, as RAFT does. Inside DataLoader workers the caller
should set ``cv2.setNumThreads``; this module leaves the thread count alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from config.errors import ConfigError
from data.frames import FramePair
from models.flow.base import FlowProvider, to_uint8_rgb
from models.registry import FLOW_PROVIDERS

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags: OpenCV's documented standard set.
FARNEBACK_PARAMS = (0.5, 3, 15, 3, 5, 1.2, 0)


def _gray_batch(x: Tensor) -> list[np.ndarray]:
    """``[B,3,H,W]`` RGB in [0,1] -> B grayscale uint8 arrays ``[H,W]``."""
    return [cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) for rgb in to_uint8_rgb(x)]


class OpenCVFlow(FlowProvider):
    """Shared batch loop; subclasses implement :meth:`_pair` on two grayscale uint8 frames."""

    def _pair(self, g1: np.ndarray, g2: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _compute(self, img1: Tensor, img2: Tensor, pairs: Sequence[FramePair] | None) -> Tensor:
        flows = [self._pair(a, b) for a, b in zip(_gray_batch(img1), _gray_batch(img2), strict=True)]
        return torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2)  # [B,H,W,2] -> [B,2,H,W]


class DISFlow(OpenCVFlow):
    """``cv2.DISOpticalFlow`` (dense inverse search) with a preset (MEDIUM by default)."""

    name = "dis"

    def __init__(self, preset: str = "medium") -> None:
        if preset not in DIS_PRESETS:
            raise ConfigError(f"unknown DIS preset '{preset}': use one of {', '.join(DIS_PRESETS)}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])

    def __getstate__(self) -> dict[str, Any]:  # cv2 objects do not pickle (spawned loader workers)
        return {"preset": self.preset}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["preset"])

    def settings(self) -> dict[str, Any]:
        return {"model": "dis", "preset": self.preset, "input": "grayscale uint8", "opencv": cv2.__version__}

    def _pair(self, g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return self._dis.calc(g1, g2, None)


class FarnebackFlow(OpenCVFlow):
    """``cv2.calcOpticalFlowFarneback`` with :data:`FARNEBACK_PARAMS`."""

    name = "farneback"

    def settings(self) -> dict[str, Any]:
        keys = ("pyr_scale", "levels", "winsize", "iterations", "poly_n", "poly_sigma", "flags")
        return {
            "model": "farneback",
            **dict(zip(keys, FARNEBACK_PARAMS, strict=True)),
            "input": "grayscale uint8",
            "opencv": cv2.__version__,
        }

    def _pair(self, g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(g1, g2, None, *FARNEBACK_PARAMS)


@FLOW_PROVIDERS.register("dis")
def build_dis(**_raft_settings: Any) -> DISFlow:
    """DIS, preset MEDIUM. The RAFT settings of the flow config (weights, iters, ...) do not apply."""
    return DISFlow("medium")


@FLOW_PROVIDERS.register("farneback")
def build_farneback(**_raft_settings: Any) -> FarnebackFlow:
    """Farneback with the standard parameters. The RAFT settings of the flow config do not apply."""
    return FarnebackFlow()
