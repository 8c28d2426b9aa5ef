"""UPerNet decode head (mmseg / HF style), exactly as ``ssp.md`` §2.2.

Inputs ``f_1..f_L`` (L >= 2; L = 4 for every tcseg backbone) with widths ``c_i`` at strides ``s_1 < ... < s_L``;
width ``C``; ``K`` classes. Every conv has no bias and is followed by BatchNorm + ReLU, except the classifier
(1x1, bias, no BN). Bilinear resizing with ``align_corners=False``; PyTorch's default initialisation.

    PPM on f_L:    z_b = up(CBR1x1(c_L -> C)(AdaptiveAvgPool(b)(f_L))) for b in (1, 2, 3, 6)
                   l_L = CBR3x3(c_L + 4C -> C)([f_L, z_1, z_2, z_3, z_6])
    laterals:      l_i = CBR1x1(c_i -> C)(f_i), i < L
    top-down:      l_i += up(l_{i+1}), i = L-1 .. 1
    FPN convs:     p_i = CBR3x3(C -> C)(l_i), i < L;  p_L = l_L
    fuse at s_1:   g = CBR3x3(L*C -> C)([p_1, up(p_2), ..., up(p_L)])        # "last feature" [B,C,H/s_1,W/s_1]
    classifier:    logits = conv1x1(C -> K, bias)(g)                          # [B,K,H/s_1,W/s_1]

Parameters for C = 256 on Hiera-S (c = 96/192/384/768): ≈ 9.2 M.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.image.heads.common import ConvBNReLU, check_levels, resize_bilinear
from models.image.heads.upsampled_conv import conv3x3_of_upsampled, tap_weights
from models.registry import HEADS


@HEADS.register("upernet")
class UperNetHead(nn.Module):
    """UPerNet: ``forward([f_1..f_L]) -> logits [B,K,H/s_1,W/s_1]`` (stride 4 for every tcseg backbone).

    Args:
        in_channels: widths ``c_i`` of the backbone outputs (from ``backbone.channels``).
        in_strides: strides ``s_i`` of the backbone outputs (from ``backbone.strides``).
        num_classes: K.
        width: C (default 256; ``build_segmentor`` picks 128/256/512 for Hiera tiny/small/base_plus).
        pool_bins: PPM bin sizes (reference 1, 2, 3, 6).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        num_classes: int,
        width: int | None = None,
        pool_bins: Sequence[int] = (1, 2, 3, 6),
    ) -> None:
        super().__init__()
        check_levels("upernet", in_channels, in_strides, 2)
        c = int(width or 256)
        self.width = c
        self.feature_channels = c  # width of the "last feature" g
        self.output_stride = int(in_strides[0])
        self.feature_stride = int(in_strides[0])
        self.crop_output = False  # logits are aligned with the input (resize, never crop)
        self.pool_bins = tuple(pool_bins)
        c_last = in_channels[-1]
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(c_last, c, 1)) for b in self.pool_bins
        )
        self.ppm_bottleneck = ConvBNReLU(c_last + len(self.pool_bins) * c, c, 3)
        self.laterals = nn.ModuleList(ConvBNReLU(ci, c, 1) for ci in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(c, c, 3) for _ in in_channels[:-1])
        self.fuse = ConvBNReLU(len(in_channels) * c, c, 3)
        self.classifier = nn.Conv2d(c, num_classes, 1)
        self.fast_fuse = False  # set by fast_inference (models.fast_path)
        self._taps: dict = {}  # the fast form's re-laid-out conv weights (upsampled_conv.tap_weights)

    def fast_inference(self, on: bool = True) -> None:
        """Without autograd, run the 3x3 convs of resized maps (the fuse conv's coarse levels, the PPM bottleneck's
        pooled bins) at the maps' own resolutions (:mod:`models.image.heads.upsampled_conv`): the same output up to
        rounding, about half of the head's work at C = 256."""
        self.fast_fuse = on

    def last_feature(self, feats: Sequence[Tensor]) -> Tensor:
        """``[f_1..f_L] -> g [B,C,H/s_1,W/s_1]``: the fused map before the classifier (DFF warps this)."""
        top = feats[-1]
        fast = self.fast_fuse and not torch.is_grad_enabled()
        pooled = [branch(top) for branch in self.ppm]  # [B,C,b,b] per bin
        lat = [conv(f) for conv, f in zip(self.laterals, feats[:-1], strict=True)]
        if fast:
            lat.append(self._conv_of_upsampled(self.ppm_bottleneck, [top, *pooled]))
        else:
            pooled = [resize_bilinear(p, top.shape[-2:]) for p in pooled]
            lat.append(self.ppm_bottleneck(torch.cat([top, *pooled], dim=1)))
        for i in range(len(lat) - 2, -1, -1):  # top-down: each level gets the coarser one added
            lat[i] = lat[i] + resize_bilinear(lat[i + 1], lat[i].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, lat[:-1], strict=True)] + [lat[-1]]
        if fast:
            return self._conv_of_upsampled(self.fuse, outs)
        size = outs[0].shape[-2:]
        return self.fuse(torch.cat([outs[0], *(resize_bilinear(o, size) for o in outs[1:])], dim=1))

    def _conv_of_upsampled(self, block: nn.Sequential, maps: Sequence[Tensor]) -> Tensor:
        """``block`` (3x3 conv, BN, ReLU) of ``cat[maps[0], up(maps[1]), ...]`` (each map bilinearly resized to
        the first one's size) without resizing or concatenating: the first map's share of the conv as a conv, the
        others' at their own resolutions. ``maps`` [B,c_i,h_i,w_i] -> [B,C,h_0,w_0]."""
        conv = block[0]
        c0 = maps[0].shape[1]
        out = F.conv2d(maps[0], conv.weight[:, :c0], conv.bias, padding=1)
        start = c0
        for m in maps[1:]:
            stop = start + m.shape[1]
            conv3x3_of_upsampled(out, m, conv.weight, tap_weights(conv.weight, start, stop, self._taps))
            start = stop
        for layer in list(block)[1:]:  # BatchNorm (unless folded into the conv) and ReLU
            out = layer(out)
        return out

    def classify(self, g: Tensor) -> Tensor:
        """``g [B,C,h,w] -> logits [B,K,h,w]``."""
        return self.classifier(g)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """``[f_1..f_L] -> logits [B,K,H/s_1,W/s_1]``."""
        return self.classify(self.last_feature(feats))
