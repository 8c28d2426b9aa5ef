"""The training step of keyframe propagation (``other_methods.md`` §4.5):

    loss = ce_weight * [ CE_w(Y_l, y*_t) + kd_weight * KL(softmax(Z_t) || softmax(Y_l)) ]   averaged over l

for every keyframe distance ``l`` of ``train_steps``: ``Y_l`` is the refined prediction of the labelled frame ``t``
propagated from the keyframe ``t - l``, ``Z_t`` the frozen keyframe model's own prediction of ``t`` (self-
distillation), ``CE_w`` the cross-entropy with ``loss_cfg.class_weights`` (ignore 255). The KL is the mean over
pixels of the sum over classes. The keyframe model never gets a gradient; the flow net and the refiner do.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from config.schema import KeyframeCfg
from data.catalog import DatasetInfo
from data.video_batch import VideoBatch
from training.steps import VIDEO_STEPS, VideoStep


def pixel_kl(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(target) || softmax(student))``: [B,K,H,W] logits each -> the mean over B x H x W of the sum over
    classes."""
    log_p = F.log_softmax(student.float(), 1)
    log_q = F.log_softmax(target.float(), 1)
    return (log_q.exp() * (log_q - log_p)).sum(1).mean()


@VIDEO_STEPS.register("keyframe")
class KeyframeStep(VideoStep):
    """Weighted CE on the propagated prediction of the labelled frame plus KL to the keyframe model, per distance."""

    def __init__(self, cfg: Any, info: DatasetInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        kcfg = cfg.video_model_cfg.keyframe if cfg.video_model_cfg.keyframe is not None else KeyframeCfg()
        self.ce_weight, self.kd_weight = kcfg.ce_weight, kcfg.kd_weight

    def describe(self) -> dict[str, Any]:
        return {"step": "keyframe", "ce_weight": self.ce_weight, "kd_weight": self.kd_weight}

    def __call__(self, model: nn.Module, batch: VideoBatch) -> tuple[torch.Tensor, dict]:
        batch = batch.to(self.device, non_blocking=True)
        out = model(batch)  # training mode: every distance's prediction in extras (through DDP's forward)
        target = out.extras["key_target"]
        per_step = {int(k.split("_")[1]): v for k, v in out.extras.items() if k.startswith("distance_")}
        labels = batch.labels[:, batch.current]
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=self.device)
        for dist, logits in sorted(per_step.items()):
            ce = self.ce(logits, labels)
            kl = pixel_kl(logits, target)
            parts[f"ce_l{dist}"], parts[f"kl_l{dist}"] = ce.detach(), kl.detach()
            total = total + self.ce_weight * (ce + self.kd_weight * kl)
        return total / len(per_step), {**parts, **self.common_parts(batch)}
