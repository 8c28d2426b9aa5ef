"""SSP's training step: ``CE(o_t, y*_t) + lambda * L_tc(o_t, y_{t-1})`` on (t-1, t) samples (``ssp.md`` §5.3, §5.5).

The flow of the temporal loss comes from the batch (the dataset's true flow, carried through the augmentation)
when its provider reads stored results, otherwise from the provider this step builds (RAFT, DIS, ...), frozen and
outside the model, its optimizer and DDP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from config.errors import ConfigError
from data.catalog import DatasetInfo
from data.transforms import denormalize
from data.video_batch import DataNeeds, VideoBatch
from models.flow import build_flow
from models.video.base import VideoOutput
from training.losses import TemporalConsistencyLoss
from training.steps import VIDEO_STEPS, VideoStep


@VIDEO_STEPS.register("ssp")
class SSPStep(VideoStep):
    """Cross-entropy on the fused output of t, plus lambda (``const_loss_lb``) times the temporal loss."""

    def __init__(self, cfg: Any, info: DatasetInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        vcfg = cfg.video_model_cfg
        self.weight = vcfg.const_loss_lb
        self.tc_loss = TemporalConsistencyLoss(vcfg.tc_loss) if self.weight > 0 else None
        self.flow = None
        self.need_forward_flow = vcfg.tc_loss.occlusion != "none"
        if self.tc_loss is None:
            return
        f = vcfg.flow
        self.flow = build_flow(f.backend, f.weights, f.iters, f.input_norm, f.pad, device=device)
        if self.flow.needs_pairs:  # stored flow: the loader carries it through the augmentation
            if self.need_forward_flow:
                raise ConfigError(
                    "video_model_cfg.tc_loss.occlusion: the forward-backward check needs flow in both directions, "
                    f"which the stored '{f.backend}' flow of augmented samples does not give; use occlusion: none or "
                    "another flow backend"
                )
            self.needs = DataNeeds(true_flows=True)

    def describe(self) -> dict[str, Any]:
        flow = None if self.flow is None else {**self.flow.settings(), "precision": self.flow.precision}
        return {"step": "ssp", "tc_weight": self.weight, "tc_flow": flow}

    def main_loss(self, out: VideoOutput, batch: VideoBatch) -> tuple[torch.Tensor, dict]:
        """The loss on the fused output (SSP: cross-entropy to the labels of t); KD-SSP overrides it."""
        ce = self.ce(out.logits[:, batch.current], batch.labels[:, batch.current])
        return ce, {"ce": ce.detach()}

    def __call__(self, model: nn.Module, batch: VideoBatch) -> tuple[torch.Tensor, dict]:
        batch = batch.to(self.device, non_blocking=True)
        cur = batch.current
        out = model(batch)
        loss, parts = self.main_loss(out, batch)
        parts.update(self.common_parts(batch))
        if self.tc_loss is None:
            return loss, parts
        fused = out.logits[:, cur]
        x_t, x_prev = batch.frames[:, cur], batch.frames[:, cur - 1]
        fwd = None
        if batch.flows is not None:
            back = batch.flows[:, cur - 1]
        else:
            with torch.no_grad():
                a, b = denormalize(x_t), denormalize(x_prev)
                back = self.flow(a, b)
                fwd = self.flow(b, a) if self.need_forward_flow else None
        tc = self.tc_loss(fused, out.image_logits[:, cur - 1], x_t, x_prev, back, fwd)
        parts["tc"] = tc.detach()
        return loss + self.weight * tc, parts
