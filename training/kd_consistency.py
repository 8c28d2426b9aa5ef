"""Flow-consistent teacher targets of KD-SSP (``ssp.md`` §5.4): average the teacher logits of t-1 and t along the
flow where a pixel is visible in both frames, keep them where it is not. No gradient; averaging is in logit space,
before the temperature softmax.

``reference``: the reference's simplified test, both flows read at the same pixel, one occlusion map (t's grid) for
both outputs, the reference's warp grid; out-of-frame samples are zeros and are averaged in unless flagged.
``proper``: the forward-backward test with the backward flow read at the displaced position, one mask per frame,
out-of-frame samples occluded, the exact warp grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.warp import flow_warp, fwd_bwd_occlusion

MODES = ("reference", "proper", "off")


@torch.no_grad()
def consistent_targets(
    t_cur: Tensor, t_prev: Tensor, flow_cur_to_prev: Tensor, flow_prev_to_cur: Tensor, mode: str
) -> tuple[Tensor, Tensor]:
    """``(T_t', T_{t-1}')`` from the teacher logits ``t_cur`` / ``t_prev`` [B,K,H,W] and the flows
    ``flow_cur_to_prev`` (f_a: t -> t-1 on t's pixels) and ``flow_prev_to_cur`` (f_b: t-1 -> t on t-1's pixels),
    [B,2,H,W] in pixels. ``mode`` ``off`` returns the inputs."""
    if mode == "off":
        return t_cur, t_prev
    if mode not in MODES:
        raise ValueError(f"kd_consistency mode must be one of {MODES}, got {mode!r}")
    f_a, f_b = flow_cur_to_prev.float(), flow_prev_to_cur.float()
    grid = "reference" if mode == "reference" else "exact"
    prev_on_cur, inside_a = flow_warp(t_prev.float(), f_a, mode="nearest", grid=grid)
    cur_on_prev, inside_b = flow_warp(t_cur.float(), f_b, mode="nearest", grid=grid)
    if mode == "reference":
        occ_cur = occ_prev = fwd_bwd_occlusion(f_a, f_b, simplified=True)
    else:
        occ_cur = fwd_bwd_occlusion(f_a, f_b) | ~inside_a
        occ_prev = fwd_bwd_occlusion(f_b, f_a) | ~inside_b
    vis_cur = (~occ_cur).unsqueeze(1).float()
    vis_prev = (~occ_prev).unsqueeze(1).float()
    # (T + v Tw) / (2 v + (1 - v)): the mean of both where visible, T alone where occluded
    new_cur = (t_cur.float() + vis_cur * prev_on_cur) / (1 + vis_cur)
    new_prev = (t_prev.float() + vis_prev * cur_on_prev) / (1 + vis_prev)
    return new_cur, new_prev
