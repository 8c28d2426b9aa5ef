"""Training steps: batch -> (loss, named parts for logging). Small functions, one per kind of model."""

from __future__ import annotations

import torch
from torch import nn


def image_step(
    model: nn.Module, batch: dict, loss_fn: nn.Module, device: torch.device
) -> tuple[torch.Tensor, dict]:
    """Supervised image step. ``batch["image"]`` [B,3,H,W], ``batch["label"]`` [B,H,W] (255 = ignore)."""
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    logits = model(images)  # [B,K,H,W]
    loss = loss_fn(logits, labels)
    return loss, {"loss": loss.detach()}
