"""Semi-supervised image training: the unlabelled stream of ``semi_cfg`` (``other_methods.md`` §1).

:func:`build_side_stream` turns ``semi_cfg`` into the training loop's :class:`training.loop.SideStream`: the pool of
unlabelled frames with their flow (:class:`data.unlabelled.UnlabelledPairs`, through the flow cache) and the step
of the loss ``semi_cfg.loss``, looked up in :data:`UNLABELLED_STEPS`. A loss lives in its own module and registers
an :class:`UnlabelledStep`; nothing here names one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from config.errors import ConfigError
from config.schema import ImageConfig, SemiCfg
from data.catalog import DatasetInfo
from data.frames import Clip
from data.unlabelled import UnlabelledPairs, partner_pairs
from models.flow import build_flow
from models.flow.cache import CachedFlow
from models.registry import Registry
from training import distributed as D
from training.loop import SideStream

UNLABELLED_STEPS = Registry("unlabelled loss")


class UnlabelledStep:
    """``step(model, batch) -> (loss, parts)`` on a batch of :class:`UnlabelledPairs` (``image`` [B,3,H,W],
    ``flow`` [B,2,H,W]); registered in :data:`UNLABELLED_STEPS` under its ``semi_cfg.loss`` name.

    Attributes:
        weight: the loss weight; 0 with ``zero_weight_unsup_step: false`` means no unlabelled step at all.
    """

    weight: float = 0.0

    def __init__(self, semi: SemiCfg, info: DatasetInfo, device: torch.device) -> None:
        self.semi, self.info, self.device = semi, info, device

    def __call__(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The loss's settings (JSON-ready), recorded in the run's metrics.json."""
        return {"loss": self.semi.loss, "weight": self.weight}

    def panels(self, model: nn.Module, batch: dict) -> list[np.ndarray]:
        """Pictures of what the loss sees and does on ``batch`` (``[H,W,3]`` uint8 each); none by default."""
        return []


def build_side_stream(
    cfg: ImageConfig,
    info: DatasetInfo,
    clips: list[Clip],
    exclude: set[tuple[str, str]],
    device: torch.device,
) -> tuple[SideStream | None, dict[str, Any] | None]:
    """The unlabelled stream of ``cfg.semi_cfg`` over the training ``clips`` (frames in ``exclude``, a held-out
    split, left out) and its description for metrics.json; (None, None) without ``semi_cfg``, and no stream when
    the loss weight is 0 and ``zero_weight_unsup_step`` is false (a labels-only baseline takes no empty step)."""
    semi = cfg.semi_cfg
    if semi is None:
        return None, None
    step = UNLABELLED_STEPS.get(semi.loss)(semi, info, device)
    mode = {"step_mode": semi.step_mode, "zero_weight_unsup_step": semi.zero_weight_unsup_step,
            "batch_size": semi.batch_size, "start_step": semi.start_step, "pool": semi.pool}  # fmt: skip
    if step.weight == 0 and not semi.zero_weight_unsup_step:
        if D.is_main():
            print(
                "== semi_cfg: loss weight 0 and zero_weight_unsup_step false: labels only, no unlabelled step"
            )
        return None, {**step.describe(), **mode, "unlabelled_step": False}
    f = semi.flow
    pairs = partner_pairs(clips, semi.pool, f.pair_offset, exclude)
    if not pairs:
        raise ConfigError(f"semi_cfg.pool: no {semi.pool} training frame t has a frame t{f.pair_offset:+d} in its "
                          "clip; use pool: all, or pair_offset: -1 where the annotated frame ends its clip")  # fmt: skip
    # computed in the loader's workers when not cached: on the CPU (python -m data.flow_cache uses the GPU)
    provider = build_flow(
        f.backend, f.weights, f.iters, device="cpu", weights_setting="semi_cfg.flow.weights"
    )
    flow = CachedFlow(provider, f.cache_dir) if f.cache_dir is not None else provider
    size = tuple(cfg.data_cfg.crop_size)
    dataset = UnlabelledPairs(pairs, size, flow, f.mask_bottom)
    missing = dataset.missing()
    if missing and D.is_main():
        where = (
            f"and stored in {f.cache_dir}"
            if f.cache_dir is not None
            else "every time (semi_cfg.flow.cache_dir null)"
        )
        print(f"== semi_cfg.flow: {missing} of {len(pairs)} unlabelled pairs have no cached {f.backend} flow at "
              f"{size[0]}x{size[1]}: computed on the fly {where}; python -m data.flow_cache CONFIG precomputes them")  # fmt: skip
    shown = [dataset[i] for i in range(min(2, len(dataset)))]  # the same frames at every validation

    def panels(model: nn.Module) -> list[np.ndarray]:
        batch = {
            "image": torch.stack([s["image"] for s in shown]),
            "flow": torch.stack([s["flow"] for s in shown]),
        }
        return step.panels(model, batch)

    description = {**step.describe(), **mode, "unlabelled_step": True, "pairs": len(pairs),
                   "flow": {**flow.settings(), "pair_offset": f.pair_offset, "mask_bottom": f.mask_bottom},
                   "flow_pairs_computed_on_the_fly": missing}  # fmt: skip
    stream = SideStream(dataset, step, semi.batch_size, semi.step_mode, semi.start_step, panels)
    return stream, description


from training.steps import fcl_step  # noqa: E402, F401  (registers "fcl")
