"""Losses. Shapes: logits [B,K,H,W]; hard labels [B,H,W] int64 with 255 = ignore; soft targets [B,K,H,W]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config.errors import ConfigError
from config.schema import LossCfg, TCLossCfg
from data.catalog import IGNORE_INDEX
from data.transforms import denormalize
from models.warp import flow_warp, fwd_bwd_occlusion


class SegmentationCE(nn.Module):
    """Cross-entropy over the labelled pixels, optional class weights (``ssp.md`` §5.1).

    ``reduction="mean"`` averages (weighted by the class weights, as PyTorch does); ``"sum"`` adds them up, the
    classic FCN setup (``other_methods.md`` §1.4) whose learning rate (1e-10) is that much smaller.
    """

    def __init__(
        self,
        class_weights: list[float] | None = None,
        num_classes: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.reduction = reduction
        if class_weights is not None and num_classes is not None and len(class_weights) != num_classes:
            raise ConfigError(
                f"loss_cfg.class_weights: {len(class_weights)} values for {num_classes} classes; give one per class"
            )
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not (labels != IGNORE_INDEX).any():
            return logits.sum() * 0.0  # a batch without labelled pixels contributes nothing (not NaN)
        return F.cross_entropy(
            logits.float(), labels, weight=self.weight, ignore_index=IGNORE_INDEX, reduction=self.reduction
        )


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
            f"loss_cfg.loss_func: '{lcfg.loss_func}' is distillation, not a loss on labels; use crossentropy here"
        )
    return SegmentationCE(lcfg.class_weights, num_classes, lcfg.ce_reduction or "mean")


class TemporalConsistencyLoss(nn.Module):
    """Flow-warped temporal-consistency loss (``ssp.md`` §5.3, ``TempConstLoss``): ``mean(M * (o_t - Y_w)^2)``.

    ``Y_w`` is the previous frame's image logits pulled into frame t along the flow t -> t-1 (nearest; the
    gradient flows into them), ``M`` a per-pixel photometric weight from how well the flow explains frame t:

    - ``signed_sum`` (reference): ``exp(-|sum_c (x_t - x_w)_c|)`` on ImageNet-normalised frames (colour changes
      of opposite sign cancel);
    - ``abs_sum``: ``exp(-alpha * sum_c |x_t - x_w|_c)`` on [0,1] frames;
    - ``none``: 1.

    With ``grid: exact`` pixels whose flow leaves the frame are masked out (the reference compares them with the
    zero padding); ``occlusion: fwd_bwd`` also masks pixels that fail the forward-backward check. The mean is
    over ``B x K x H x W`` as in the reference, so masking lowers the loss scale rather than re-weighting.
    """

    def __init__(self, cfg: TCLossCfg) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(
        self,
        fused: torch.Tensor,
        prev_logits: torch.Tensor,
        frame: torch.Tensor,
        prev_frame: torch.Tensor,
        flow: torch.Tensor,
        flow_prev_to_cur: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``fused`` o_t [B,K,H,W]; ``prev_logits`` y_{t-1} [B,K,H,W]; ``frame``/``prev_frame`` [B,3,H,W]
        ImageNet-normalised; ``flow`` [B,2,H,W] t -> t-1 on frame t; ``flow_prev_to_cur`` [B,2,H,W] (t-1 -> t on
        frame t-1) for the occlusion check. Returns a scalar."""
        c = self.cfg
        flow = flow.float()
        warped_frame, inside = flow_warp(prev_frame.float(), flow, mode="nearest", grid=c.grid)
        if c.photometric == "signed_sum":
            weight = torch.exp(-(frame.float() - warped_frame).sum(1, keepdim=True).abs())
        elif c.photometric == "abs_sum":
            diff = denormalize(frame.float()) - denormalize(warped_frame)
            weight = torch.exp(-c.alpha * diff.abs().sum(1, keepdim=True))
        else:
            weight = torch.ones_like(frame[:, :1], dtype=torch.float32)
        if c.grid == "exact":
            weight = weight * inside.unsqueeze(1)
        if c.occlusion == "fwd_bwd":
            if flow_prev_to_cur is None:
                raise ConfigError(
                    "video_model_cfg.tc_loss.occlusion=fwd_bwd needs the flow in both directions"
                )
            occluded = fwd_bwd_occlusion(flow, flow_prev_to_cur.float())
            weight = weight * (~occluded).unsqueeze(1)
        target = flow_warp(prev_logits.float(), flow, mode="nearest", grid=c.grid)[0]
        current = fused.float()
        if c.space == "probs":
            current, target = current.softmax(1), target.softmax(1)
        return (weight.detach() * (current - target).pow(2)).mean()
