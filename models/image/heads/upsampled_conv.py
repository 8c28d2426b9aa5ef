"""A 3x3 convolution of bilinearly upsampled maps, computed without convolving at the upsampled resolution.

UPerNet's fuse conv (``ssp.md`` §2.2) applies a 3x3 conv to ``[p_1, up(p_2), up(p_3), up(p_4)]``: three of its
four inputs are coarse maps brought to stride 4, so three quarters of the head's largest conv multiply
interpolated values. Convolution, bilinear resizing and shifting are all linear, and a 3x3 conv is a sum over its
nine taps of a channel mixing followed by a one-pixel shift::

    conv3x3(W, up(p))(i, j) = sum_{dy,dx} [W[:, :, dy, dx] @ up(p)](i + dy - 1, j + dx - 1)
                            = sum_{dy,dx} up(W[:, :, dy, dx] @ p)(i + dy - 1, j + dx - 1)

so the channel mixing of every tap runs at the coarse resolution (one 1x1 conv with 9C outputs), and what is left
at the fine resolution is per-channel resampling: ``A_h^{dy} Q_{dy,dx} A_w^{dx}^T`` with ``A`` the bilinear
interpolation matrix and ``A^{d}`` its rows shifted by ``d - 1`` (zero rows outside the map: the conv's zero
padding). ``A`` comes from ``F.interpolate`` itself, so the coefficients and the border clamping are PyTorch's.
Each interpolation matrix has two non-zeros per row; it is applied in row blocks over the band of columns they
touch, so the cost grows with the output size, not with the product of the two sizes.

At 256x448 on Hiera-S + UperNet(256) this replaces about 12.7 of the head's 22.5 GMAC by 1.4 GMAC of coarse
1x1 convs plus the resampling. The result equals the plain conv up to the order of the sums (about 1e-6).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Output rows per block when an interpolation matrix is applied: small enough to skip most zero columns, large
# enough to keep the matrix products efficient.
BLOCK_ROWS = 32


@functools.lru_cache(maxsize=64)
def _shifted_bands(
    n_in: int, n_out: int, device: torch.device, dtype: torch.dtype
) -> tuple[tuple[tuple[int, int, int, int, Tensor], ...], ...]:
    """For the three shifts ``d`` of a 3x3 tap: blocks ``(r0, r1, c0, c1, A^d[r0:r1, c0:c1])`` of the shifted
    bilinear interpolation matrix ``A^d [n_out, n_in]`` (``A^d[i] = A[i + d - 1]``, zero outside), non-zero
    blocks only. Cached: a stream resamples the same sizes every frame (never modify the blocks)."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape(1, n_in, n_in, 1)
    # Column k of A is the interpolation of a unit impulse at k; float64 keeps PyTorch's coefficients exact.
    a = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)[
        0, :, :, 0
    ].T  # [n_out, n_in]
    out = []
    for d in range(3):
        shifted = torch.zeros_like(a)
        lo, hi = max(0, 1 - d), min(n_out, n_out + 1 - d)
        shifted[lo:hi] = a[lo + d - 1 : hi + d - 1]
        blocks = []
        for r0 in range(0, n_out, BLOCK_ROWS):
            r1 = min(n_out, r0 + BLOCK_ROWS)
            cols = shifted[r0:r1].abs().sum(0).nonzero()
            if len(cols):
                c0, c1 = int(cols[0]), int(cols[-1]) + 1
                blocks.append((r0, r1, c0, c1, shifted[r0:r1, c0:c1].to(device=device, dtype=dtype)))
        out.append(tuple(blocks))
    return tuple(out)


def tap_weights(weight: Tensor, start: int, stop: int, cache: dict | None = None) -> Tensor:
    """Input channels ``start:stop`` of a 3x3 conv ``weight`` [C_out,C_in,3,3] as ``[3(dy), 3(dx), C, C_out]``, the
    layout :func:`conv3x3_of_upsampled` multiplies by. With a ``cache`` (a dict the caller owns, e.g. on its module)
    the result is kept until that weight tensor changes: the copy costs about 2 ms a frame per UPerNet level at
    C = 256, and inference weights never change. The cache holds the weight itself, so a new tensor that happens to
    reuse a freed one's memory is never mistaken for it."""
    entry = None if cache is None else cache.get((start, stop))
    if entry is not None and entry[0] is weight and entry[1] == weight._version:
        return entry[2]
    taps = weight.detach()[:, start:stop].permute(2, 3, 1, 0).contiguous()
    if cache is not None:
        cache[(start, stop)] = (weight, weight._version, taps)
    return taps


def _apply_rows(out: Tensor, blocks: Sequence[tuple[int, int, int, int, Tensor]], x: Tensor) -> None:
    """``out[:, r0:r1] += A_block @ x[:, c0:c1]`` for every block: ``x`` [N, n_in, M], ``out`` [N, n_out, M]."""
    n = x.shape[0]
    for r0, r1, c0, c1, a in blocks:
        out[:, r0:r1].baddbmm_(a.expand(n, -1, -1), x[:, c0:c1])


def conv3x3_of_upsampled(out: Tensor, coarse: Tensor, weight: Tensor, taps: Tensor | None = None) -> Tensor:
    """``out += conv3x3(weight, up(coarse))`` with zero padding 1, in place; returns ``out``.

    ``out`` [B,C_out,H,W] (any float layout; written through a channels-last view when it is channels-last),
    ``coarse`` [B,C_in,h,w], ``weight`` [C_out,C_in,3,3] (no bias: the caller adds it once), or ``taps``, the
    weight as :func:`tap_weights` lays it out. ``up`` is bilinear resizing to ``H x W`` with
    ``align_corners=False``, as :func:`models.image.heads.common.resize_bilinear`.
    """
    b, c_out, hh, ww = out.shape
    _, c_in, h, w = coarse.shape
    x = coarse.permute(0, 2, 3, 1).reshape(b * h * w, c_in)  # pixels x channels (a view when channels-last)
    if taps is None:
        taps = tap_weights(weight, 0, weight.shape[1])
    rows = _shifted_bands(w, ww, out.device, out.dtype)
    cols = _shifted_bands(h, hh, out.device, out.dtype)
    channels_last = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    target = out.permute(0, 2, 3, 1) if channels_last else out.new_zeros(b, hh, ww, c_out)  # [B,H,W,C] view
    flat_target = target.reshape(b, hh, ww * c_out)
    for dy in range(3):
        wide = out.new_zeros(b * h, ww, c_out)  # the width-resampled taps of row shift dy, summed over dx
        for dx in range(3):
            # this tap's channel mixing at the coarse resolution: [B*h, w, C_out]
            q = torch.mm(x, taps[dy, dx]).view(b * h, w, c_out)
            _apply_rows(wide, rows[dx], q)
        _apply_rows(flat_target, cols[dy], wide.view(b, h, ww * c_out))
    if not channels_last:
        out.add_(target.permute(0, 3, 1, 2))
    return out
