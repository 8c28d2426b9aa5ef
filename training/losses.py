"""Losses. Shapes: logits [B,K,H,W]; hard labels [B,H,W] int64 with 255 = ignore; soft targets [B,K,H,W]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config.errors import ConfigError
from config.schema import LossCfg

IGNORE_INDEX = 255


class SegmentationCE(nn.Module):
    """Cross-entropy averaged over the labelled pixels, optional class weights (``ssp.md`` §5.1)."""

    def __init__(self, class_weights: list[float] | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        if class_weights is not None and num_classes is not None and len(class_weights) != num_classes:
            raise ConfigError(
                f"loss_cfg.class_weights: {len(class_weights)} values for {num_classes} classes; give one per class"
            )
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not (labels != IGNORE_INDEX).any():
            return logits.sum() * 0.0  # a batch without labelled pixels contributes nothing (not NaN)
        return F.cross_entropy(logits.float(), labels, weight=self.weight, ignore_index=IGNORE_INDEX)


def kl_distillation(
    logits: torch.Tensor, target: torch.Tensor, temperature: float, softmax_on_target: bool, reduction: str
) -> torch.Tensor:
    """``T^2 * KL(p_T || softmax(logits / T))`` (``ssp.md`` §5.2).

    ``batchmean_reference`` sums over K x H x W and divides by B (the reference; scales with the pixel count),
    ``mean_per_pixel`` additionally divides by H x W.
    """
    t = temperature
    p = F.softmax(target.float() / t, dim=1) if softmax_on_target else target.float()
    log_q = F.log_softmax(logits.float() / t, dim=1)
    kl = (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum() / logits.shape[0]
    if reduction == "mean_per_pixel":
        kl = kl / (logits.shape[-1] * logits.shape[-2])
    return kl * t * t


def build_segmentation_loss(lcfg: LossCfg, num_classes: int) -> nn.Module:
    """The main loss of ``loss_cfg`` for hard labels."""
    if lcfg.loss_func != "crossentropy":
        raise ConfigError(
            f"loss_cfg.loss_func: '{lcfg.loss_func}' needs teacher logits (knowledge distillation), "
            "which this version does not train yet; use crossentropy"
        )
    return SegmentationCE(lcfg.class_weights, num_classes)
