"""torchvision RAFT (``raft_large`` / ``raft_small``) with weights from a local file (``ecosystem.md`` §2).

- Built with ``weights=None`` (never a download); the state dict comes from ``torch.load(..., weights_only=True)``
  and must fit exactly. torchvision names its files ``<name>-<first 8 hex digits of the sha256>.pth``: when the
  file name has that form the digest is checked, and the full sha256 is recorded in :meth:`settings`.
- ``input_norm``: ``minus1_1`` (``2x - 1``, what torchvision's RAFT expects) or ``imagenet`` (``(x - mean)/std``,
  the SSP reference defect, ``metrics.md`` §3.4d).
- ``pad``: ``replicate`` pads symmetrically by edge replication (as RAFT's ``InputPadder``) to a multiple of 8
  and to at least 128 x 128 (RAFT's correlation pyramid needs a 16 x 16 grid at stride 8), then crops the flow
  back; ``none`` requires such sizes and raises :class:`ConfigError` otherwise (``metrics.md`` §3.4f).
- Frozen: eval mode, ``requires_grad_(False)``, float32, the last of ``iters`` refinements.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models import optical_flow

from config.errors import CheckpointError, ConfigError
from data.frames import FramePair
from models.flow.base import FlowProvider, file_sha256
from models.image.pretrained import read_state_dict, verify_and_load
from models.registry import FLOW_PROVIDERS

InputNorm = Literal["minus1_1", "imagenet"]
Pad = Literal["none", "replicate"]

# torchvision's C_T_V1 files: ports of the original RAFT checkpoints (FlyingChairs + FlyingThings).
DEFAULT_WEIGHTS = {
    "raft_large": "base_checkpoints/raft_large_C_T_V1-22a6c225.pth",
    "raft_small": "base_checkpoints/raft_small_C_T_V1-ad48884c.pth",
}
_URLS = {
    "raft_large": "https://download.pytorch.org/models/raft_large_C_T_V1-22a6c225.pth "
    "(torchvision Raft_Large_Weights.C_T_V1)",
    "raft_small": "https://download.pytorch.org/models/raft_small_C_T_V1-ad48884c.pth "
    "(torchvision Raft_Small_Weights.C_T_V1)",
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_SHA_SUFFIX = re.compile(r"-([0-9a-f]{8})\.pth?$")
MIN_SIZE = 128  # 16 feature cells at stride 8


def load_raft_weights(model: torch.nn.Module, arch: str, path: Path) -> str:
    """Check and load a local RAFT state dict into ``model``; returns the file's full sha256."""
    if not path.is_file():
        raise CheckpointError(
            f"RAFT weights '{path}' not found: download {_URLS[arch]} into base_checkpoints/ "
            "(tcseg never downloads weights) or set video_model_cfg.flow.weights"
        )
    digest = file_sha256(path)
    m = _SHA_SUFFIX.search(path.name)
    if m and not digest.startswith(m.group(1)):
        raise CheckpointError(
            f"RAFT weights '{path}': the file name says sha256 {m.group(1)}..., the file has {digest[:8]}...; "
            f"the download is corrupt or the file was renamed: download {_URLS[arch]} again"
        )
    verify_and_load(model, read_state_dict(path), path=path, what=f"torchvision {arch}", expected=_URLS[arch])
    return digest


class RaftFlow(FlowProvider):
    """Frozen torchvision RAFT; see the module docstring for the options."""

    def __init__(
        self,
        arch: Literal["raft_large", "raft_small"] = "raft_large",
        weights: str | Path | None = None,
        iters: int = 20,
        input_norm: InputNorm = "minus1_1",
        pad: Pad = "replicate",
        device: torch.device | str = "cpu",
    ) -> None:
        if arch not in DEFAULT_WEIGHTS:
            raise ConfigError(f"unknown RAFT model '{arch}': use raft_large or raft_small")
        if input_norm not in ("minus1_1", "imagenet"):
            raise ConfigError(f"flow.input_norm '{input_norm}' is not one of minus1_1, imagenet")
        if pad not in ("none", "replicate"):
            raise ConfigError(f"flow.pad '{pad}' is not one of none, replicate")
        if iters < 1:
            raise ConfigError(f"flow.iters must be at least 1, got {iters}")
        self.name = arch
        self.iters, self.input_norm, self.pad = int(iters), input_norm, pad
        self.weights = Path(weights if weights is not None else DEFAULT_WEIGHTS[arch])
        self.model = getattr(optical_flow, arch)(weights=None, progress=False)
        self.sha256 = load_raft_weights(self.model, arch, self.weights)
        self.model.eval().requires_grad_(False).to(device)

    def settings(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "weights": self.weights.name,
            "sha256": self.sha256,
            "iters": self.iters,
            "input_norm": self.input_norm,
            "pad": "none" if self.pad == "none" else "replicate (symmetric, to a multiple of 8 and >= 128)",
            "precision": "float32",
        }

    def _normalise(self, x: Tensor) -> Tensor:
        if self.input_norm == "minus1_1":
            return x * 2 - 1
        mean = torch.tensor(_IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def _padding(self, h: int, w: int) -> tuple[int, int, int, int]:
        """``(left, right, top, bottom)`` for ``F.pad``; all zero when none is needed."""
        th, tw = max(-(-h // 8) * 8, MIN_SIZE), max(-(-w // 8) * 8, MIN_SIZE)
        if (th, tw) != (h, w) and self.pad == "none":
            raise ConfigError(
                f"flow.pad=none but the frames are {h}x{w}: RAFT needs H and W divisible by 8 and at least "
                f"{MIN_SIZE}; set video_model_cfg.flow.pad=replicate"
            )
        return (tw - w) // 2, tw - w - (tw - w) // 2, (th - h) // 2, th - h - (th - h) // 2

    def _compute(self, img1: Tensor, img2: Tensor, pairs: Sequence[FramePair] | None) -> Tensor:
        if next(self.model.parameters()).device != img1.device:  # follow the data (built before .cuda())
            self.model.to(img1.device)
        h, w = img1.shape[-2:]
        pl, pr, pt, pb = self._padding(h, w)
        a, b = self._normalise(img1.float()), self._normalise(img2.float())
        if pl or pr or pt or pb:
            a = F.pad(a, (pl, pr, pt, pb), mode="replicate")
            b = F.pad(b, (pl, pr, pt, pb), mode="replicate")
        flow = self.model(a, b, num_flow_updates=self.iters)[-1]
        return flow[..., pt : pt + h, pl : pl + w]


def _builder(arch: Literal["raft_large", "raft_small"]) -> Any:
    def build(
        weights: str | Path | None = None,
        iters: int = 20,
        input_norm: InputNorm = "minus1_1",
        pad: Pad = "replicate",
        device: torch.device | str = "cpu",
    ) -> RaftFlow:
        return RaftFlow(arch, weights, iters, input_norm, pad, device)

    build.__doc__ = f"Frozen torchvision {arch} from a local weights file (default {DEFAULT_WEIGHTS[arch]})."
    return build


FLOW_PROVIDERS.register("raft_large")(_builder("raft_large"))
FLOW_PROVIDERS.register("raft_small")(_builder("raft_small"))
