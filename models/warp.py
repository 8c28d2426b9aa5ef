"""Warping maps with a homography or an optical flow, and the forward-backward occlusion test.

Shared by the video models (homography warps), the temporal-consistency loss and the TC metric (flow warps), so
that one convention holds everywhere:

- Pixel centres sit at integer coordinates ``0 .. W-1``; a homography ``H`` maps homogeneous pixel coordinates
  of the previous frame to the current one, ``p_cur ~ H p_prev`` (``ssp.md`` §3.2).
- A flow ``f`` ``[B,2,H,W]`` (x, y in pixels) lives on the pixels of its first frame and points into the second:
  ``first(p) ~ second(p + f(p))``. ``flow_warp(second, f)`` pulls the second frame's map onto the first's grid.
- Flow warps offer two grids (``metrics.md`` §3.4a): ``exact`` samples at ``p + f`` exactly; ``reference``
  normalises with ``2x/(W-1) - 1`` under ``align_corners=False`` as the SSP/VSPW code does, which stretches the
  grid by ``W/(W-1)`` and pushes the last row and column half a pixel out of the frame.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Grid = Literal["reference", "exact"]


def scale_homography(h: Tensor, s: float, scaling: Literal["reference", "centered"] = "reference") -> Tensor:
    """``H`` [B,3,3] in full-resolution pixels -> the same motion on a map at resolution factor ``s``.

    ``reference``: ``S H S^-1`` with ``S = diag(s, s, 1)`` (the SSP code; ignores the half-pixel offset between
    the stride-4 grid and the full grid). ``centered``: ``u' = (u + 0.5) s - 0.5``, the exact pixel-centre map.
    """
    if s == 1.0:
        return h
    c = 0.5 * s - 0.5 if scaling == "centered" else 0.0
    m = torch.tensor([[s, 0.0, c], [0.0, s, c], [0.0, 0.0, 1.0]], dtype=h.dtype, device=h.device)
    return m @ h @ torch.linalg.inv(m)


@functools.lru_cache(maxsize=16)
def _pixel_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[H,W,2]`` (x, y) pixel coordinates (cached: streaming warps the same sizes every frame; never modify)."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype),
        torch.arange(w, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((xs, ys), dim=-1)


@functools.lru_cache(maxsize=16)
def _homogeneous_grid(h: int, w: int, device: torch.device) -> Tensor:
    """``[H*W, 3]`` float32 ``(x, y, 1)`` pixel coordinates (cached like :func:`_pixel_grid`; never modify)."""
    pix = _pixel_grid(h, w, device, torch.float32).reshape(-1, 2)
    return torch.cat([pix, torch.ones_like(pix[:, :1])], dim=1)


def homography_warp(
    x: Tensor,
    h: Tensor,
    scale: float = 1.0,
    *,
    mode: str = "bilinear",
    scaling: Literal["reference", "centered"] = "reference",
) -> Tensor:
    """Resample ``x`` [B,C,h,w] (a map at resolution factor ``scale`` of the input) into the current frame.

    ``h`` [B,3,3] is ``H_{t-1 -> t}`` in input pixels. ``out(p) = x(H'^-1 p)`` with ``H'`` from
    :func:`scale_homography`; bilinear (or nearest) sampling, zeros outside the source, pixel centres at integer
    coordinates (kornia ``warp_perspective`` with ``align_corners=True``). Identity ``h`` returns ``x`` exactly.
    """
    b, _, hh, ww = x.shape
    hs = scale_homography(h.to(torch.float64), scale, scaling)
    if torch.equal(hs, torch.eye(3, dtype=hs.dtype, device=hs.device).expand_as(hs)):
        return x  # identity registration: exact, and free (the "no registration" ablation)
    # Geometry is never done in reduced precision, even under bf16 autocast: bf16 keeps 8 bits of mantissa, i.e.
    # pixel positions to about 8 px at 1280 px. The inverse in float64, the per-pixel map and the sampling in
    # float32 (1e-4 px at 1280 px is far below what matters); only the result goes back to x's dtype.
    with torch.autocast(x.device.type, enabled=False):
        # grid_sample's coordinates are affine in the source pixel, (2 u + 1) / size - 1 (pixel-centre
        # normalisation, as _normalise "exact"): folded into the inverse homography, one product and one division
        # per pixel give them.
        norm = torch.tensor([[2.0 / ww, 0.0, 1.0 / ww - 1.0], [0.0, 2.0 / hh, 1.0 / hh - 1.0], [0.0, 0.0, 1.0]],
                            dtype=torch.float64, device=hs.device)  # fmt: skip
        m = (norm @ torch.linalg.inv(hs)).to(torch.float32)  # [B,3,3]
        src = _homogeneous_grid(hh, ww, x.device) @ m.transpose(1, 2)  # [B,N,3]
        # points behind the camera (denominator <= 0) land far outside
        grid = (src[..., :2] / src[..., 2:].clamp_min(1e-12)).reshape(b, hh, ww, 2)
        out = F.grid_sample(x.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)


def _normalise(pos: Tensor, h: int, w: int, grid: Grid) -> Tensor:
    """Pixel positions [B,H,W,2] -> ``grid_sample`` coordinates (used with ``align_corners=False``)."""
    size = torch.tensor([w, h], dtype=pos.dtype, device=pos.device)
    if grid == "exact":
        return (2 * pos + 1) / size - 1  # pixel-centre normalisation: samples exactly at pos
    if grid == "reference":
        return 2 * pos / (size - 1).clamp_min(1) - 1
    raise ValueError(f"grid must be 'reference' or 'exact', got {grid!r}")


def flow_warp(
    x: Tensor, flow: Tensor, *, mode: str = "nearest", grid: Grid = "exact"
) -> tuple[Tensor, Tensor]:
    """Pull ``x`` [B,C,H,W] (a map on the second frame) onto the first frame along ``flow`` [B,2,H,W].

    Returns ``(warped [B,C,H,W], inside [B,H,W] bool)``: ``warped(p) = x(p + flow(p))`` with zero padding, and
    whether the sample fell inside the frame under the same grid convention and sampling mode.
    """
    b, _, h, w = x.shape
    # In float32 whatever the autocast: bf16 sampling positions would be off by pixels (see homography_warp).
    with torch.autocast(x.device.type, enabled=False):
        pos = _pixel_grid(h, w, flow.device, torch.float32).unsqueeze(0) + flow.float().permute(0, 2, 3, 1)
        g = _normalise(pos, h, w, grid)
        warped = F.grid_sample(x.float(), g, mode=mode, padding_mode="zeros", align_corners=False)
        ones = torch.ones((b, 1, h, w), dtype=g.dtype, device=x.device)
        inside = F.grid_sample(ones, g, mode=mode, padding_mode="zeros", align_corners=False)[:, 0] > 0.5
    return (warped.to(x.dtype) if x.is_floating_point() else warped.round().to(x.dtype)), inside


def fwd_bwd_occlusion(fwd: Tensor, bwd: Tensor, *, simplified: bool = False) -> Tensor:
    """Forward-backward consistency test (Sundaram et al.): ``[B,H,W]`` True where a pixel is occluded.

    ``fwd`` [B,2,H,W] is the flow first -> second on the first frame, ``bwd`` second -> first on the second.
    The proper test reads ``bwd`` at the forward-displaced point ``p + fwd(p)`` (bilinear); ``simplified``
    reads it at ``p`` as the SSP code does. A pixel is occluded when
    ``|fwd + bwd'|^2 > 0.01 (|fwd|^2 + |bwd'|^2) + 0.5``.
    """
    back = bwd if simplified else flow_warp(bwd, fwd, mode="bilinear", grid="exact")[0]
    total = (fwd + back).pow(2).sum(1)
    return total > 0.01 * (fwd.pow(2).sum(1) + back.pow(2).sum(1)) + 0.5
