"""The optical-flow provider interface, shared by the TC metric, the temporal-consistency loss and DFF/NetWarp.

Convention (``models/warp.py``): a flow ``f`` ``[B,2,H,W]`` lives on ``img1``'s pixels and points into ``img2``,
``img1(p) ~ img2(p + f(p))``; channel 0 = x, channel 1 = y, in pixels at the frame resolution.

Providers are plain objects, not ``nn.Module``s: a frozen flow network must stay out of the model's state dict
and out of DDP (``ecosystem.md`` §8). They take RGB in [0, 1] and convert to what their model expects.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data.frames import FramePair


def to_uint8_rgb(x: Tensor) -> np.ndarray:
    """``[B,3,H,W]`` float RGB in [0,1] (any device) -> ``[B,H,W,3]`` uint8 RGB numpy (rounded, clamped).

    Rounding makes frames that came from uint8 files (``/ 255``) round-trip exactly.
    """
    u8 = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def check_frames(img1: Tensor, img2: Tensor, pairs: Sequence[FramePair] | None, what: str) -> None:
    """Shapes of a frame batch: both ``[B,3,H,W]`` of one size, and one pair per sample when pairs are given."""
    if img1.dim() != 4 or img1.shape[1] != 3 or img1.shape != img2.shape:
        raise ValueError(
            f"{what}: expected two [B,3,H,W] frame batches of one shape, got "
            f"{tuple(img1.shape)} and {tuple(img2.shape)}"
        )
    if pairs is not None and len(pairs) != img1.shape[0]:
        raise ValueError(f"{what}: {len(pairs)} frame pairs for a batch of {img1.shape[0]}")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (a RAFT file is 5-20 MB: a few tens of ms)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class FlowProvider(ABC):
    """``provider(img1 [B,3,H,W], img2 [B,3,H,W], pairs=None) -> flow [B,2,H,W]`` float32 on ``img1.device``.

    ``img1``/``img2`` are float RGB in [0,1]. ``pairs`` (one :class:`FramePair` per sample) name the frames on
    disk; only providers that read stored results (``gt``) need them. No gradient flows through a provider.
    """

    name: str = ""
    # True when the provider reads stored results through ``pairs`` (``gt``): it then cannot follow augmented
    # frames, so a video model asks the data side for the stored flows instead (``DataNeeds.true_flows``).
    needs_pairs: bool = False
    precision: str = "float32"  # what __call__ runs the provider in, whatever the caller's autocast

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-ready description recorded with every result: model, weights name + sha256, iterations, ..."""

    @abstractmethod
    def _compute(self, img1: Tensor, img2: Tensor, pairs: Sequence[FramePair] | None) -> Tensor:
        """The flow ``[B,2,H,W]`` (any float dtype and device); runs under ``torch.inference_mode``."""

    def __call__(self, img1: Tensor, img2: Tensor, pairs: Sequence[FramePair] | None = None) -> Tensor:
        check_frames(img1, img2, pairs, f"flow provider '{self.name}'")
        # A frozen helper runs in float32 even inside a bf16-autocast training or evaluation step (its settings
        # record that precision): its weights were trained in fp32, and its output is geometry in pixels.
        with torch.inference_mode(), torch.autocast(img1.device.type, enabled=False):
            flow = self._compute(img1.float(), img2.float(), pairs)
        # Inference tensors cannot be saved for backward; the temporal loss warps logits that need grad along
        # this flow, so hand back an ordinary tensor (one small copy).
        return flow.to(device=img1.device, dtype=torch.float32).clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()})"
