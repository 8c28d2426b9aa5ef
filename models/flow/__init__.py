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

from typing import Any

import torch
from torch import nn

from config.errors import ConfigError
from models.flow import gt, opencv, raft
from models.flow.base import FlowProvider
from models.flow.gt import GTFlow
from models.flow.opencv import DISFlow, FarnebackFlow
from models.flow.raft import RaftFlow, RaftNet
from models.registry import FLOW_NETWORKS, FLOW_PROVIDERS


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


def build_feature_flow(
    section: Any, key: str, device: torch.device | str = "cpu", pretrained: bool = True
) -> tuple[nn.Module | None, FlowProvider | None]:
    """The flow a method warps its features with, from its config section (``FeatureFlowCfg`` keys: ``flow``,
    ``flow_weights``, ``flow_iters``, ``flow_input_norm``, ``train_flow``); ``key`` is the section's path, e.g.
    ``video_model_cfg.dff``, for the messages.

    ``train_flow``: ``(network, None)``, a trainable network from :data:`FLOW_NETWORKS` (saved and optimised with
    the method; its start weights are read unless ``pretrained=False``, when a checkpoint is loaded right after).
    Otherwise ``(None, provider)``, a frozen provider whose weights are always needed (it is not in checkpoints).
    """
    setting = f"{key}.flow_weights"
    if not section.train_flow:
        provider = build_flow(section.flow, section.flow_weights, section.flow_iters, section.flow_input_norm,
                              "replicate", device=device, weights_setting=setting)  # fmt: skip
        return None, provider
    if section.flow not in FLOW_NETWORKS:
        raise ConfigError(
            f"{key}.flow: '{section.flow}' is not a trainable flow network (trainable: "
            f"{', '.join(FLOW_NETWORKS.names())}); set {key.rsplit('.', 1)[-1]}.train_flow: false to use it as a "
            "frozen provider"
        )
    network = FLOW_NETWORKS.build(section.flow, weights=section.flow_weights, iters=section.flow_iters,
                                  input_norm=section.flow_input_norm, load_weights=pretrained,
                                  weights_setting=setting)  # fmt: skip
    return network, None


def flow_to_previous(
    network: nn.Module | None, provider: FlowProvider | None, cur01: torch.Tensor, prev01: torch.Tensor,
    pair: Any = None,
) -> torch.Tensor:  # fmt: skip
    """``[B,2,H,W]``: the displacement at the current frame's pixels pointing into the previous frame, from what
    :func:`build_feature_flow` built (``cur01``, ``prev01``: ``[B,3,H,W]`` RGB in [0,1]; ``pair``: the
    :class:`~data.frames.FramePair` previous -> current on disk, for providers that read stored flow)."""
    if network is not None:
        return network(cur01, prev01)
    # The provider computes img1 -> img2 = current -> previous, so the pair on disk is reversed too.
    pairs = None if pair is None else [type(pair)(pair.second_path, pair.first_path, pair.second, pair.first)]
    return provider(cur01, prev01, pairs)


__all__ = [
    "DISFlow",
    "FarnebackFlow",
    "FlowProvider",
    "GTFlow",
    "RaftFlow",
    "RaftNet",
    "build_feature_flow",
    "build_flow",
    "flow_to_previous",
    "gt",
    "opencv",
    "raft",
]
