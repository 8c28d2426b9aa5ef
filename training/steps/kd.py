"""Distillation steps (``loss_cfg.loss_func: kldiv``, ``ssp.md`` §5.5):

- KD image baseline: ``KL_T(y_t, T_t)`` (:func:`image_kd_step`);
- KD-SSP (``ssp:kldiv``): ``KL_T(o_t, T_t') + mu KL_T(y_{t-1}, T_{t-1}') + lambda L_tc(o_t, y_{t-1})``, where
  ``T'`` are the teacher's logits made flow-consistent (``video_model_cfg.kd_consistency``, §5.4) with a frozen
  flow provider built here (no gradient, outside the model, its optimizer and DDP).

The KL's reduction is explicit (``loss_cfg.kl_reduction``): ``batchmean_reference`` sums over K x H x W and divides
by B, so its scale (and the lambda that balances it) grows with the crop; ``mean_per_pixel`` does not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from config.errors import ConfigError
from config.schema import LossCfg
from data.catalog import DatasetInfo
from data.transforms import denormalize
from data.video_batch import DataNeeds, VideoBatch
from models.flow import build_flow
from models.video.base import VideoOutput
from training.kd_consistency import consistent_targets
from training.losses import kl_distillation
from training.steps import VIDEO_STEPS
from training.steps.ssp import SSPStep
from training.teacher import Teacher, build_teacher


class KLLoss:
    """``T^2 KL(softmax(target / T) || softmax(logits / T))`` with the config's temperature and reduction."""

    def __init__(self, lcfg: LossCfg) -> None:
        if lcfg.temperature <= 0:
            raise ConfigError(
                "loss_cfg.temperature: distillation needs a temperature > 0 (the reference uses 2)"
            )
        self.t, self.softmax_on_target, self.reduction = (
            lcfg.temperature,
            lcfg.softmax_on_target,
            lcfg.kl_reduction,
        )

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` [B,K,H,W] of the student, ``target`` [B,K,H,W] raw teacher logits -> scalar."""
        return kl_distillation(logits, target, self.t, self.softmax_on_target, self.reduction)

    def describe(self) -> dict[str, Any]:
        return {"temperature": self.t, "reduction": self.reduction}


def image_kd_step(
    model: nn.Module, batch: dict, teacher: Teacher, kl: KLLoss, device: torch.device
) -> tuple[torch.Tensor, dict]:
    """KD image baseline: ``batch["image"]`` [B,3,H,W] and the teacher's entries -> ``KL_T(y_t, T_t)``."""
    images = batch["image"].to(device, non_blocking=True)
    logits = model(images)  # [B,K,H,W]
    loss = kl(logits, teacher.targets(batch, tuple(images.shape[-2:])))
    return loss, {"loss": loss.detach(), "kl": loss.detach()}


@VIDEO_STEPS.register("ssp:kldiv")
class KDSSPStep(SSPStep):
    """KD-SSP: SSP trained on a teacher's logits (module docstring)."""

    def __init__(self, cfg: Any, info: DatasetInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        vcfg = cfg.video_model_cfg
        teacher = build_teacher(cfg, info, device, with_previous=True)
        assert teacher is not None  # this step is chosen by loss_func kldiv, which build_teacher checked
        self.teacher, self.kl, self.mu = teacher, KLLoss(cfg.loss_cfg), vcfg.last_out_loss_lb
        self.mode = vcfg.kd_consistency.mode if vcfg.kd_consistent_labels else "off"
        self.kd_flow = None
        if self.mode != "off":
            f = vcfg.kd_consistency.flow
            self.kd_flow = build_flow(f.backend, f.weights, f.iters, f.input_norm, f.pad, device=device,
                                      weights_setting="video_model_cfg.kd_consistency.flow.weights")  # fmt: skip
            if self.kd_flow.needs_pairs:
                raise ConfigError(
                    f"video_model_cfg.kd_consistency.flow.backend: '{f.backend}' reads stored flow of unaugmented "
                    "frames, but the check runs on augmented samples in both directions; use dis, farneback or raft_*"
                )
        self.needs = self.needs.merge(DataNeeds(teacher=teacher.source))

    def describe(self) -> dict[str, Any]:
        flow = (
            None if self.kd_flow is None else {**self.kd_flow.settings(), "precision": self.kd_flow.precision}
        )
        return {**super().describe(), "step": "ssp:kldiv", "kl": self.kl.describe(), "mu": self.mu,
                "kd_consistency": self.mode, "kd_flow": flow, "teacher": self.teacher.describe()}  # fmt: skip

    def main_loss(self, out: VideoOutput, batch: VideoBatch) -> tuple[torch.Tensor, dict]:
        cur = batch.current
        size = tuple(batch.frames.shape[-2:])
        targets = self.teacher.targets(batch, size)  # [B,T,K,H,W]
        t_cur, t_prev = targets[:, cur], targets[:, cur - 1]
        if self.kd_flow is not None:
            with torch.no_grad():
                a, b = denormalize(batch.frames[:, cur]), denormalize(batch.frames[:, cur - 1])
                t_cur, t_prev = consistent_targets(
                    t_cur, t_prev, self.kd_flow(a, b), self.kd_flow(b, a), self.mode
                )
        kl_cur = self.kl(out.logits[:, cur], t_cur)
        loss, parts = kl_cur, {"kl": kl_cur.detach()}
        if self.mu > 0:
            if out.image_logits is None:
                raise ConfigError(
                    "video_model_cfg.last_out_loss_lb: this model gives no image logits for frame t-1"
                )
            kl_prev = self.kl(out.image_logits[:, cur - 1], t_prev)
            loss = loss + self.mu * kl_prev
            parts["kl_prev"] = kl_prev.detach()
        return loss, parts
