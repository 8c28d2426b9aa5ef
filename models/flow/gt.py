"""The synthetic set's true optical flow (``gt``), read from ``<clip>/flow/<stem>.npz``.

A pair ``first -> first + 1`` reads the first frame's ``forward`` flow, ``first -> first - 1`` its ``backward``
flow; any other pair is a :class:`DataError`. The stored flow lives at the resolution the set was generated at;
when the frames are another size the field is resized bilinearly (``align_corners=False``) and its x and y
components are multiplied by the width and height ratios (exact for a resize of the whole frame, meaningless for
crops: feed ``gt`` unaugmented or only resized frames).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from config.errors import ConfigError, DataError
from data.frames import FramePair
from data.synthetic.io import load_flow
from models.flow.base import FlowProvider
from models.registry import FLOW_PROVIDERS


def resize_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B,2,h,w]`` flow in pixels of ``h x w`` -> ``[B,2,H,W]`` in pixels of ``size = (H, W)``."""
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = torch.tensor([size[1] / w, size[0] / h], dtype=out.dtype, device=out.device).view(1, 2, 1, 1)
    return out * scale


class GTFlow(FlowProvider):
    """True flow of the synthetic set; needs ``pairs`` (frames on disk)."""

    name = "gt"
    needs_pairs = True

    def settings(self) -> dict[str, Any]:
        return {
            "model": "gt",
            "source": "flow/<stem>.npz of the synthetic set",
            "resize": "bilinear, vectors scaled, when the frames differ from the stored size",
        }

    def _compute(self, img1: Tensor, img2: Tensor, pairs: Sequence[FramePair] | None) -> Tensor:
        if pairs is None:
            raise ConfigError(
                "flow backend 'gt' reads the synthetic set's true flow and needs the frame pairs on disk; "
                "pass pairs, or use raft_large/raft_small/dis/farneback"
            )
        out = []
        for pair in pairs:
            if pair.second == pair.first + 1:
                direction = "forward"
            elif pair.second == pair.first - 1:
                direction = "backward"
            else:
                raise DataError(
                    f"{pair.first_path}: true flow exists only between adjacent frames, "
                    f"got the pair ({pair.first}, {pair.second})"
                )
            flow = torch.from_numpy(load_flow(pair.clip_dir, pair.first_path.stem, direction))
            out.append(resize_flow(flow.permute(2, 0, 1)[None], tuple(img1.shape[-2:]))[0])
        return torch.stack(out)


@FLOW_PROVIDERS.register("gt")
def build_gt(**_raft_settings: Any) -> GTFlow:
    """The synthetic set's true flow. The RAFT settings of the flow config do not apply."""
    return GTFlow()
