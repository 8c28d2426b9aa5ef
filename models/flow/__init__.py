"""Optical-flow providers, chosen by name (``video_model_cfg.flow.backend``) from :data:`FLOW_PROVIDERS`.

=============  ===========================================================================================
name           what
=============  ===========================================================================================
``raft_large``  torchvision RAFT, local weights (default ``raft_large_C_T_V1-22a6c225.pth``), frozen
``raft_small``  torchvision RAFT-small, local weights (default ``raft_small_C_T_V1-ad48884c.pth``), frozen
``dis``         OpenCV DIS, preset MEDIUM, CPU, weight-free
``farneback``   OpenCV Farneback, standard parameters, CPU, weight-free
``gt``          the synthetic set's true flow (needs the frame pairs)
=============  ===========================================================================================

Every provider: ``provider(img1 [B,3,H,W] RGB in [0,1], img2, pairs=None) -> flow [B,2,H,W]`` float32 on
``img1.device``, on ``img1``'s pixels pointing into ``img2`` (x, y in pixels); ``provider.settings()`` describes
it for the results (see :mod:`models.flow.base`).

Trainable flow networks (``nn.Module``s saved and optimised with their owner, e.g. DFF's ``train_flow``) are in
:data:`models.registry.FLOW_NETWORKS`: ``raft_large``, ``raft_small`` (:class:`models.flow.raft.RaftNet`).
"""

from __future__ import annotations

import torch

from config.errors import ConfigError
from models.flow import gt, opencv, raft
from models.flow.base import FlowProvider
from models.flow.gt import GTFlow
from models.flow.opencv import DISFlow, FarnebackFlow
from models.flow.raft import RaftFlow, RaftNet
from models.registry import FLOW_PROVIDERS


def build_flow(
    backend: str,
    weights: str | None = None,
    iters: int = 20,
    input_norm: str = "minus1_1",
    pad: str = "replicate",
    device: torch.device | str = "cpu",
    weights_setting: str = "video_model_cfg.flow.weights",
) -> FlowProvider:
    """Build the flow provider ``backend``; the other arguments are RAFT settings (ignored by the others).

    ``weights=None`` means the default local file of the RAFT model (``base_checkpoints/...``); a missing file's
    error tells the user to set ``weights_setting`` (the config key or flag the weights come from). An unknown
    backend or option value is a :class:`ConfigError`; a missing or mismatched weights file a ``CheckpointError``.
    """
    if input_norm not in ("minus1_1", "imagenet"):
        raise ConfigError(f"flow.input_norm '{input_norm}' is not one of minus1_1, imagenet")
    if pad not in ("none", "replicate"):
        raise ConfigError(f"flow.pad '{pad}' is not one of none, replicate")
    builder = FLOW_PROVIDERS.get(backend)
    return builder(
        weights=weights,
        iters=iters,
        input_norm=input_norm,
        pad=pad,
        device=device,
        weights_setting=weights_setting,
    )


__all__ = [
    "DISFlow",
    "FarnebackFlow",
    "FlowProvider",
    "GTFlow",
    "RaftFlow",
    "RaftNet",
    "build_flow",
    "gt",
    "opencv",
    "raft",
]
