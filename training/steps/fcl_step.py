"""The flow-consistency step on unlabelled frames (``semi_cfg.loss: fcl``, ``other_methods.md`` §1.3, §1.5).

The network's prediction of each unlabelled frame and the flow to its partner frame go into
:class:`training.fcl.FlowConsistencyLoss` with the settings of ``semi_cfg.fcl``. With weight 0 (and
``zero_weight_unsup_step: true``) the loss is an exact zero with zero gradients, so the optimizer step still applies
weight decay and momentum: the reference baseline's quirk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from config.schema import SemiCfg
from data.catalog import DatasetInfo
from data.transforms import denormalize
from eval.evaluate import label_map
from eval.vis.flow import flow_to_rgb, weight_to_rgb
from eval.vis.render import overlay, panel
from training.fcl import FlowConsistencyLoss
from training.semi import UNLABELLED_STEPS, UnlabelledStep


@UNLABELLED_STEPS.register("fcl")
class FCLStep(UnlabelledStep):
    """``weight * FCL(model(image), flow)`` on a batch of unlabelled frames (``image`` [B,3,H,W], ``flow``
    [B,2,H,W] in pixels at the input size)."""

    def __init__(self, semi: SemiCfg, info: DatasetInfo, device: torch.device) -> None:
        super().__init__(semi, info, device)
        self.loss = FlowConsistencyLoss(**semi.fcl.resolved())
        self.weight = self.loss.weight

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "preset": self.semi.fcl.preset, **self.semi.fcl.resolved()}

    def __call__(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        images = batch["image"].to(self.device, non_blocking=True)
        flow = batch["flow"].to(self.device, non_blocking=True)
        loss, weights = self.loss.terms(model(images), flow)
        # share of the pixels the loss acts on (a neighbour whose motion differs enough)
        return loss, {"fcl": loss.detach(), "fcl_active": (weights > 0).float().mean()}

    @torch.no_grad()
    def panels(self, model: nn.Module, batch: dict) -> list[np.ndarray]:
        """Per frame: the frame | its flow | the FCL weight map | the prediction (eval mode)."""
        was_training = model.training
        model.eval()
        try:
            pred = label_map(model(batch["image"].to(self.device)), 1).cpu().numpy()
        finally:
            model.train(was_training)
        weights = self.loss.weight_map(batch["flow"].float())[:, 0].numpy()
        out = []
        for i in range(len(pred)):
            rgb = (denormalize(batch["image"][i]).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            flow = batch["flow"][i].numpy()
            out.append(panel([rgb, flow_to_rgb(flow), weight_to_rgb(weights[i]), overlay(rgb, pred[i], self.info)],
                             ["frame", "flow", "FCL weight", "prediction"]))  # fmt: skip
        return out
