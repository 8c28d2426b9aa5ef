"""Config -> model: the one place where ``model_cfg`` turns into explicit constructor arguments."""

from __future__ import annotations

from typing import Any

import torch

from config.errors import ConfigError
from config.schema import PLANNED_VIDEO_METHODS, UPERNET_CONVNEXT_IDS, ModelCfg, VideoConfig
from models.image.segmentor import Segmentor, build_segmentor
from models.registry import VIDEO_MODELS

# Default backbone per architecture when model_cfg.backbone is null.
_DEFAULT_BACKBONE = {"upernet": "resnet18", "fcn8s": "vgg16", "swiftnet": "resnet18"}


def image_model_parts(mcfg: ModelCfg) -> tuple[str, str]:
    """(backbone name, head name) for a ``model_cfg`` built from registered parts (every arch but segformer).

    ``upernet`` with an ``openmmlab/upernet-convnext-*`` id is tcseg's UperNet on timm's ConvNeXt of that size
    (the reference loads Hugging Face's UperNet; ``ssp.md`` §2.4).
    """
    if mcfg.model_architecture == "hierasam_upernet":
        return f"sam2_hiera_{mcfg.checkpoint_model}", "upernet"
    if mcfg.model_architecture == "upernet" and mcfg.checkpoint_model in UPERNET_CONVNEXT_IDS:
        return UPERNET_CONVNEXT_IDS[mcfg.checkpoint_model], "upernet"
    return mcfg.backbone or _DEFAULT_BACKBONE[mcfg.model_architecture], mcfg.model_architecture


def build_image_model(mcfg: ModelCfg, num_classes: int, load_backbone_weights: bool = True) -> Segmentor:
    """Build the image segmentor of ``model_cfg``.

    ``load_backbone_weights=False`` skips ``pretrained_backbone`` (used when a tcseg checkpoint is loaded
    right after, so the original SAM2/ImageNet file need not be present on the evaluating machine).
    ``segformer`` goes through the optional ``transformers`` package (:mod:`models.image.segformer`).
    """
    if mcfg.model_architecture == "segformer":
        from models.image.segformer import build_segformer  # transformers is optional: imported on use

        folder = mcfg.pretrained_backbone if load_backbone_weights else None
        model = build_segformer(mcfg.checkpoint_model, num_classes, folder=folder, upsampling=mcfg.upsampling)
        if mcfg.frozen_encoder:
            model.backbone.requires_grad_(False)
        return model
    backbone, head = image_model_parts(mcfg)
    model = build_segmentor(
        backbone,
        head,
        num_classes,
        head_width=mcfg.head_width,
        upsampling=mcfg.upsampling,
        pretrained_backbone=mcfg.pretrained_backbone if load_backbone_weights else None,
    )
    if mcfg.frozen_encoder:
        model.backbone.requires_grad_(False)
    return model


def build_video_model(
    cfg: VideoConfig,
    image_model: Segmentor,
    *,
    device: torch.device | str = "cpu",
    pretrained: bool = True,
    use_caches: bool = True,
) -> Any:
    """The video model of ``video_model_cfg.model_name`` around ``image_model``, built by its registered builder,
    which also builds the method's frozen helpers (kept outside its state dict).

    ``pretrained=False``: a checkpoint's state dict is loaded right after, so trainable parts need not read their
    initial weights from local files. ``use_caches=False``: helpers never read on-disk caches of their results.
    """
    name = cfg.video_model_cfg.model_name
    if name in PLANNED_VIDEO_METHODS and name not in VIDEO_MODELS:
        raise ConfigError(
            f"video_model_cfg.model_name: '{name}' ({PLANNED_VIDEO_METHODS[name]}) is planned but not available "
            f"yet; available: {', '.join(VIDEO_MODELS.names())}"
        )
    builder = VIDEO_MODELS.get(name)
    return builder(cfg, image_model, device=device, pretrained=pretrained, use_caches=use_caches)
