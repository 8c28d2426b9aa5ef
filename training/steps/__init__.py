"""Training steps: batch -> (loss, named parts for logging). Small functions, one per kind of training.

Image training uses :func:`image_step` (labels) or :func:`training.steps.kd.image_kd_step` (a teacher). Every video
method names its step (``VideoModel.train_step``); the step's builder, registered in :data:`VIDEO_STEPS`, gets the
config and builds what the loss needs (its own frozen helpers, such as the temporal loss's flow provider or a
teacher), and returns a :class:`VideoStep`. ``train_video`` only looks the name up (:func:`step_name`), so a method
whose loss is plain cross-entropy (DFF, the per-frame adapter) needs no step of its own. A method's distillation
variant is registered as ``<step>:kldiv`` (``ssp:kldiv`` = KD-SSP) and chosen by ``loss_cfg.loss_func: kldiv``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from config.errors import ConfigError
from data.catalog import DatasetInfo
from data.video_batch import DataNeeds, VideoBatch
from models.registry import Registry
from training.losses import build_segmentation_loss

VIDEO_STEPS = Registry("video training step")


def image_step(
    model: nn.Module, batch: dict, loss_fn: nn.Module, device: torch.device
) -> tuple[torch.Tensor, dict]:
    """Supervised image step. ``batch["image"]`` [B,3,H,W], ``batch["label"]`` [B,H,W] (255 = ignore)."""
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    logits = model(images)  # [B,K,H,W]
    loss = loss_fn(logits, labels)
    return loss, {"loss": loss.detach()}


def step_name(train_step: str, loss_func: str) -> str:
    """The registered step of a method's ``train_step`` under ``loss_cfg.loss_func``; a method without a
    distillation step gets a one-line error for ``kldiv``."""
    name = train_step if loss_func == "crossentropy" else f"{train_step}:{loss_func}"
    if name not in VIDEO_STEPS:
        with_kd = sorted(n.split(":")[0] for n in VIDEO_STEPS.names() if n.endswith(f":{loss_func}"))
        raise ConfigError(
            f"loss_cfg.loss_func: '{loss_func}' (distillation) is offered for the video steps {', '.join(with_kd)} "
            f"(SSP: model_name base), not for this method's '{train_step}' step; use crossentropy"
        )
    return name


class VideoStep:
    """``step(model, batch) -> (loss, parts)`` for one video batch (on the CPU; the step moves it).

    Attributes:
        needs: what the loss needs from the data on top of the model's own needs (e.g. true flows).
    """

    needs = DataNeeds()

    def __init__(self, cfg: Any, info: DatasetInfo, device: torch.device) -> None:
        self.device = device
        # distillation steps (loss_func kldiv) build their KL loss instead
        self.ce = (
            build_segmentation_loss(cfg.loss_cfg, info.num_classes).to(device)
            if cfg.loss_cfg.loss_func == "crossentropy"
            else None
        )

    def __call__(self, model: nn.Module, batch: VideoBatch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The loss and its helpers' settings (JSON-ready), recorded at the start of a run."""
        return {"step": type(self).__name__}

    @staticmethod
    def common_parts(batch: VideoBatch) -> dict[str, torch.Tensor]:
        """Logged for every method: the share of loader registrations that fell back to the identity."""
        if batch.registration_fallback is None or batch.registration_fallback.numel() == 0:
            return {}
        return {"registration_fallback": batch.registration_fallback.float().mean()}


@VIDEO_STEPS.register("supervised")
class SupervisedStep(VideoStep):
    """``CE(out_t, y*_t)`` on the current frame of each sample (DFF, NetWarp, TCB, per-frame: ``ssp.md`` §5.5)."""

    def __call__(self, model: nn.Module, batch: VideoBatch) -> tuple[torch.Tensor, dict]:
        batch = batch.to(self.device, non_blocking=True)
        out = model(batch)
        ce = self.ce(out.logits[:, batch.current], batch.labels[:, batch.current])
        return ce, {"ce": ce.detach(), **self.common_parts(batch)}


from training.steps import kd, keyframe, ssp  # noqa: E402, F401  (register "ssp", "ssp:kldiv", "keyframe")
