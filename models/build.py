"""Config -> model: the one place where ``model_cfg`` turns into explicit constructor arguments."""

from __future__ import annotations

from typing import Any

from config.schema import ModelCfg, VideoModelCfg
from models.image.segmentor import Segmentor, build_segmentor
from models.registry import VIDEO_MODELS

# Default backbone per architecture when model_cfg.backbone is null.
_DEFAULT_BACKBONE = {"upernet": "resnet18", "fcn8s": "vgg16", "swiftnet": "resnet18"}


def image_model_parts(mcfg: ModelCfg) -> tuple[str, str]:
    """(backbone name, head name) for a ``model_cfg``."""
    if mcfg.model_architecture == "hierasam_upernet":
        return f"sam2_hiera_{mcfg.checkpoint_model}", "upernet"
    return mcfg.backbone or _DEFAULT_BACKBONE[mcfg.model_architecture], mcfg.model_architecture


def build_image_model(mcfg: ModelCfg, num_classes: int, load_backbone_weights: bool = True) -> Segmentor:
    """Build the image segmentor of ``model_cfg``.

    ``load_backbone_weights=False`` skips ``pretrained_backbone`` (used when a tcseg checkpoint is loaded
    right after, so the original SAM2/ImageNet file need not be present on the evaluating machine).
    """
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


def build_video_model(vcfg: VideoModelCfg, image_model: Segmentor, registration: Any | None) -> Any:
    """The video model of ``video_model_cfg.model_name`` around ``image_model``; ``registration`` is the
    homography provider it calls when a batch brings no homographies (kept outside its state dict)."""
    return VIDEO_MODELS.build(vcfg.model_name, vcfg=vcfg, image_model=image_model, registration=registration)
