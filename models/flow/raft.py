"""torchvision RAFT (``raft_large`` / ``raft_small``) with weights from a local file (``ecosystem.md`` §2).

- Built with ``weights=None`` (never a download); the state dict comes from ``torch.load(..., weights_only=True)``
  and must fit exactly. torchvision names its files ``<name>-<first 8 hex digits of the sha256>.pth``: when the
  file name has that form the digest is checked, and the full sha256 is recorded in :meth:`settings`.
- ``input_norm``: ``minus1_1`` (``2x - 1``, what torchvision's RAFT expects) or ``imagenet`` (``(x - mean)/std``,
  the SSP reference defect, ``metrics.md`` §3.4d).
- ``pad``: ``replicate`` pads symmetrically by edge replication (as RAFT's ``InputPadder``) to a multiple of 8
  and to at least 128 x 128 (RAFT's correlation pyramid needs a 16 x 16 grid at stride 8), then crops the flow
  back; ``none`` requires such sizes and raises :class:`ConfigError` otherwise (``metrics.md`` §3.4f).
- :class:`RaftFlow` (a provider, in ``FLOW_PROVIDERS``) is frozen: eval mode, ``requires_grad_(False)``,
  float32, the last of ``iters`` refinements.
- :class:`RaftNet` (an ``nn.Module``, in ``FLOW_NETWORKS``) is the same network, differentiable and trainable
  (DFF's ``train_flow``): it lives in its owner's module tree, so it is saved, optimised and follows
  ``train()``/``eval()``. Both run :func:`run_raft`, so input normalisation and padding cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import optical_flow

from config.errors import CheckpointError, ConfigError
from data.frames import FramePair
from models.flow.base import FlowProvider, file_sha256
from models.image.pretrained import read_state_dict, verify_and_load
from models.registry import FLOW_NETWORKS, FLOW_PROVIDERS

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


def load_raft_weights(
    model: torch.nn.Module, arch: str, path: Path, setting: str = "video_model_cfg.flow.weights"
) -> str:
    """Check and load a local RAFT state dict into ``model``; returns the file's full sha256. ``setting`` is the
    config key the missing-file error points at."""
    if not path.is_file():
        raise CheckpointError(
            f"RAFT weights '{path}' not found: download {_URLS[arch]} into base_checkpoints/ "
            f"(tcseg never downloads weights) or set {setting}"
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


def normalise_input(x: Tensor, input_norm: InputNorm) -> Tensor:
    """``[B,3,H,W]`` RGB in [0,1] -> what RAFT is fed: ``2x - 1`` (``minus1_1``) or ImageNet-normalised."""
    if input_norm == "minus1_1":
        return x * 2 - 1
    mean = torch.tensor(_IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def raft_padding(h: int, w: int, pad: Pad) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` for ``F.pad`` to a multiple of 8 and at least :data:`MIN_SIZE`; all zero
    when none is needed. ``pad='none'`` raises :class:`ConfigError` when padding would be needed."""
    th, tw = max(-(-h // 8) * 8, MIN_SIZE), max(-(-w // 8) * 8, MIN_SIZE)
    if (th, tw) != (h, w) and pad == "none":
        raise ConfigError(
            f"flow.pad=none but the frames are {h}x{w}: RAFT needs H and W divisible by 8 and at least "
            f"{MIN_SIZE}; set video_model_cfg.flow.pad=replicate"
        )
    return (tw - w) // 2, tw - w - (tw - w) // 2, (th - h) // 2, th - h - (th - h) // 2


def run_raft(
    model: nn.Module, img1: Tensor, img2: Tensor, iters: int, input_norm: InputNorm, pad: Pad
) -> Tensor:
    """torchvision RAFT on ``img1, img2`` [B,3,H,W] RGB in [0,1] -> flow [B,2,H,W] float32 on ``img1``'s pixels
    pointing into ``img2``: normalised, padded (:func:`raft_padding`), ``iters`` refinements, the last one
    cropped back to ``H x W``. Differentiable; the caller picks the grad mode."""
    h, w = img1.shape[-2:]
    pl, pr, pt, pb = raft_padding(h, w, pad)
    a, b = normalise_input(img1.float(), input_norm), normalise_input(img2.float(), input_norm)
    if pl or pr or pt or pb:
        a = F.pad(a, (pl, pr, pt, pb), mode="replicate")
        b = F.pad(b, (pl, pr, pt, pb), mode="replicate")
    flow = model(a, b, num_flow_updates=iters)[-1]
    return flow[..., pt : pt + h, pl : pl + w].float()  # autocast may run RAFT in bf16; pixels need fp32


def _check_options(arch: str, iters: int, input_norm: str, pad: str) -> None:
    if arch not in DEFAULT_WEIGHTS:
        raise ConfigError(f"unknown RAFT model '{arch}': use raft_large or raft_small")
    if input_norm not in ("minus1_1", "imagenet"):
        raise ConfigError(f"flow.input_norm '{input_norm}' is not one of minus1_1, imagenet")
    if pad not in ("none", "replicate"):
        raise ConfigError(f"flow.pad '{pad}' is not one of none, replicate")
    if iters < 1:
        raise ConfigError(f"flow.iters must be at least 1, got {iters}")


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
        weights_setting: str = "video_model_cfg.flow.weights",
    ) -> None:
        _check_options(arch, iters, input_norm, pad)
        self.name = arch
        self.iters, self.input_norm, self.pad = int(iters), input_norm, pad
        self.weights = Path(weights if weights is not None else DEFAULT_WEIGHTS[arch])
        self.model = getattr(optical_flow, arch)(weights=None, progress=False)
        self.sha256 = load_raft_weights(self.model, arch, self.weights, weights_setting)
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

    def _compute(self, img1: Tensor, img2: Tensor, pairs: Sequence[FramePair] | None) -> Tensor:
        if next(self.model.parameters()).device != img1.device:  # follow the data (built before .cuda())
            self.model.to(img1.device)
        return run_raft(self.model, img1, img2, self.iters, self.input_norm, self.pad)


class RaftNet(nn.Module):
    """Trainable torchvision RAFT: ``forward(img1, img2 [B,3,H,W] RGB in [0,1]) -> flow [B,2,H,W]`` float32 on
    ``img1``'s pixels pointing into ``img2``, differentiable (the last of ``iters`` refinements).

    Same normalisation and replicate padding as :class:`RaftFlow`. ``load_weights=False`` keeps the random
    initialisation: for a network whose trained weights come from a checkpoint loaded right after, so the RAFT
    file need not exist then. With ``True`` the local file is checked and loaded (:func:`load_raft_weights`).
    """

    def __init__(
        self,
        arch: Literal["raft_large", "raft_small"] = "raft_large",
        weights: str | Path | None = None,
        iters: int = 8,
        input_norm: InputNorm = "minus1_1",
        load_weights: bool = True,
        weights_setting: str = "the flow network's weights setting",
    ) -> None:
        super().__init__()
        _check_options(arch, iters, input_norm, "replicate")
        self.arch, self.iters, self.input_norm = arch, int(iters), input_norm
        self.weights = Path(weights if weights is not None else DEFAULT_WEIGHTS[arch])
        self.net = getattr(optical_flow, arch)(weights=None, progress=False)
        # None when the start weights are not read here (a checkpoint replaces them).
        self.sha256 = (
            load_raft_weights(self.net, arch, self.weights, weights_setting) if load_weights else None
        )

    def settings(self) -> dict[str, Any]:
        """JSON-ready description (start weights, iterations, input normalisation)."""
        return {
            "model": self.arch,
            "trainable": True,
            "start_weights": self.weights.name if self.sha256 is not None else "from the checkpoint",
            "sha256": self.sha256,
            "iters": self.iters,
            "input_norm": self.input_norm,
            "pad": "replicate (symmetric, to a multiple of 8 and >= 128)",
        }

    def forward(self, img1: Tensor, img2: Tensor) -> Tensor:
        """``img1, img2`` [B,3,H,W] in [0,1] -> flow [B,2,H,W] (x, y in pixels), ``img1 -> img2``."""
        return run_raft(self.net, img1, img2, self.iters, self.input_norm, "replicate")


def _builder(arch: Literal["raft_large", "raft_small"]) -> Any:
    def build(
        weights: str | Path | None = None,
        iters: int = 20,
        input_norm: InputNorm = "minus1_1",
        pad: Pad = "replicate",
        device: torch.device | str = "cpu",
        weights_setting: str = "video_model_cfg.flow.weights",
    ) -> RaftFlow:
        return RaftFlow(arch, weights, iters, input_norm, pad, device, weights_setting)

    build.__doc__ = f"Frozen torchvision {arch} from a local weights file (default {DEFAULT_WEIGHTS[arch]})."
    return build


FLOW_PROVIDERS.register("raft_large")(_builder("raft_large"))
FLOW_PROVIDERS.register("raft_small")(_builder("raft_small"))


def _network_builder(arch: Literal["raft_large", "raft_small"]) -> Any:
    def build(
        weights: str | Path | None,
        iters: int,
        input_norm: InputNorm,
        load_weights: bool,
        weights_setting: str,
    ) -> RaftNet:
        return RaftNet(arch, weights, iters, input_norm, load_weights, weights_setting)

    build.__doc__ = (
        f"Trainable torchvision {arch}, started from a local file (default {DEFAULT_WEIGHTS[arch]})."
    )
    return build


FLOW_NETWORKS.register("raft_large")(_network_builder("raft_large"))
FLOW_NETWORKS.register("raft_small")(_network_builder("raft_small"))
