"""Training steps: batch -> (loss, named parts for logging). Small functions, one per kind of model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from data.transforms import denormalize


def image_step(
    model: nn.Module, batch: dict, loss_fn: nn.Module, device: torch.device
) -> tuple[torch.Tensor, dict]:
    """Supervised image step. ``batch["image"]`` [B,3,H,W], ``batch["label"]`` [B,H,W] (255 = ignore)."""
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    logits = model(images)  # [B,K,H,W]
    loss = loss_fn(logits, labels)
    return loss, {"loss": loss.detach()}


def video_step(
    model: nn.Module,
    batch: dict,
    loss_fn: nn.Module,
    device: torch.device,
    *,
    tc_loss: nn.Module | None = None,
    tc_weight: float = 0.0,
    flow_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    need_forward_flow: bool = False,
) -> tuple[torch.Tensor, dict]:
    """SSP step on a (t-1, t) sample: ``CE(o_t, y*_t) + lambda * L_tc(o_t, y_{t-1})`` (``ssp.md`` §5.5).

    ``batch["frames"]`` [B,T,3,H,W] (time order), ``batch["labels"]`` [B,T,H,W], ``batch["current"]`` [B];
    optional ``homographies`` [B,T-1,3,3] (registered in the loader) and ``flows`` [B,T-1,2,H,W] (true backward
    flows from the loader). Otherwise ``flow_fn(first01, second01) -> [B,2,H,W]`` computes the flow for the loss,
    without gradient and outside the DDP-wrapped model.
    """
    frames = batch["frames"].to(device, non_blocking=True)
    cur = int(batch["current"][0])
    homs = batch.get("homographies")
    out = model(frames, None if homs is None else homs.to(device, non_blocking=True))
    fused = out["fused"][:, cur]
    labels = batch["labels"][:, cur].to(device, non_blocking=True)
    ce = loss_fn(fused, labels)
    parts = {"ce": ce.detach()}
    if "registration_fallback" in batch:  # share of loader registrations that fell back to the identity
        parts["registration_fallback"] = batch["registration_fallback"].float().mean()
    if tc_loss is None or tc_weight == 0.0:
        return ce, parts
    x_t, x_prev = frames[:, cur], frames[:, cur - 1]
    back = fwd = None
    if "flows" in batch:
        back = batch["flows"][:, cur - 1].to(device, non_blocking=True)
    else:
        with torch.no_grad():
            a, b = denormalize(x_t), denormalize(x_prev)
            back = flow_fn(a, b)
            fwd = flow_fn(b, a) if need_forward_flow else None
    tc = tc_loss(fused, out["image"][:, cur - 1], x_t, x_prev, back, fwd)
    parts["tc"] = tc.detach()
    return ce + tc_weight * tc, parts
