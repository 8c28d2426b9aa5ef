"""``model_cfg``, the image network of image configs, and the model ids it accepts. Kept apart from
:mod:`config.schema`, which imports and re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from config.errors import ConfigError
from config.fields import opt

# model_cfg.checkpoint_model values besides the Hiera sizes: the Hugging Face ids the reference names (ssp.md 2.4,
# 10.3). tcseg downloads nothing: upernet-convnext-* is its own UperNet on timm's ConvNeXt (backbone weights from a
# local file), segformer ids are read from a local folder by the optional transformers package.
HIERA_SIZES = ("tiny", "small", "base_plus")
UPERNET_CONVNEXT_IDS = {
    "openmmlab/upernet-convnext-tiny": "convnext_tiny",
    "openmmlab/upernet-convnext-small": "convnext_small",
    "openmmlab/upernet-convnext-base": "convnext_base",
}
UPERNET_SWIN_IDS = (
    "openmmlab/upernet-swin-tiny",
    "openmmlab/upernet-swin-small",
    "openmmlab/upernet-swin-base",
)
SEGFORMER_IDS = (
    *(f"nvidia/mit-b{i}" for i in range(6)),
    "nvidia/segformer-b2-finetuned-cityscapes-1024-1024",
    "nvidia/segformer-b3-finetuned-cityscapes-1024-1024",
)


@dataclass
class ModelCfg:
    """`model_cfg`: the image segmentation network (image configs only)."""

    model_architecture: Literal["hierasam_upernet", "upernet", "fcn8s", "swiftnet", "segformer"] = opt(
        "hierasam_upernet",
        "hierasam_upernet = SAM2 Hiera (checkpoint_model) + UperNet; segformer = Hugging Face SegFormer "
        "(checkpoint_model, optional transformers); otherwise the head on model_cfg.backbone; case-insensitive "
        "(reference: Segformer, UPerNet)",
        registry="head",
        registry_extra=("hierasam_upernet", "segformer"),
        ignore_case=True,
    )
    checkpoint_model: Literal[
        "tiny",
        "small",
        "base_plus",
        "openmmlab/upernet-convnext-tiny",
        "openmmlab/upernet-convnext-small",
        "openmmlab/upernet-convnext-base",
        "openmmlab/upernet-swin-tiny",
        "openmmlab/upernet-swin-small",
        "openmmlab/upernet-swin-base",
        "nvidia/mit-b0",
        "nvidia/mit-b1",
        "nvidia/mit-b2",
        "nvidia/mit-b3",
        "nvidia/mit-b4",
        "nvidia/mit-b5",
        "nvidia/segformer-b2-finetuned-cityscapes-1024-1024",
        "nvidia/segformer-b3-finetuned-cityscapes-1024-1024",
    ] = opt(
        "small",
        "hierasam_upernet: SAM2 Hiera size, which also fixes the UperNet width (128/256/512); upernet: "
        "openmmlab/upernet-convnext-* = UperNet(512) on timm's ConvNeXt (swin: not offered); segformer: the "
        "nvidia/* model, read from the local folder pretrained_backbone",
    )
    backbone: str | None = opt(
        None, "backbone name for the other architectures (default: vgg16 for fcn8s, resnet18 otherwise)"
    )
    head_width: int | None = opt(
        None, "head channel width; null = the reference width for the backbone", min=1
    )
    pretrained_backbone: str | None = opt(
        None,
        "local backbone weights file (e.g. base_checkpoints/sam2_hiera_small.pt; convnext: timm's ImageNet "
        "weights); segformer: the local save_pretrained folder of checkpoint_model; null = random init",
    )
    upsampling: Literal["bicubic", "bilinear", "nearest"] = opt(
        "bicubic", "interpolation of the stride-4 logits to the input size"
    )
    frozen_encoder: bool = opt(False, "freeze the backbone (train the head only)")

    def __post_init__(self) -> None:
        arch, ckpt = self.model_architecture, self.checkpoint_model
        if arch == "hierasam_upernet" and ckpt not in HIERA_SIZES:
            raise ConfigError(
                f"model_cfg.checkpoint_model: '{ckpt}' is not a SAM2 Hiera size ({', '.join(HIERA_SIZES)}), which "
                "hierasam_upernet needs; or set model_architecture to segformer (nvidia/*) or upernet (openmmlab/*)"
            )
        if arch == "segformer" and ckpt not in SEGFORMER_IDS:
            raise ConfigError(
                f"model_cfg.checkpoint_model: segformer needs an nvidia/* model (e.g. nvidia/mit-b2), got '{ckpt}'"
            )
        if ckpt in UPERNET_SWIN_IDS:
            raise ConfigError(
                f"model_cfg.checkpoint_model: '{ckpt}': Swin backbones are not offered; use "
                "openmmlab/upernet-convnext-small (UperNet on timm's ConvNeXt-S)"
            )
        if ckpt in UPERNET_CONVNEXT_IDS:
            if arch != "upernet":
                raise ConfigError(
                    f"model_cfg.checkpoint_model: '{ckpt}' is an UperNet model; set model_architecture: upernet"
                )
            if self.backbone not in (None, UPERNET_CONVNEXT_IDS[ckpt]):
                raise ConfigError(
                    f"model_cfg.backbone: '{self.backbone}' contradicts checkpoint_model '{ckpt}' "
                    f"({UPERNET_CONVNEXT_IDS[ckpt]}); set only one of the two"
                )
        if arch in ("fcn8s", "swiftnet", "upernet") and ckpt in SEGFORMER_IDS:
            raise ConfigError(
                f"model_cfg.checkpoint_model: '{ckpt}' is a SegFormer model; set model_architecture: segformer"
            )
