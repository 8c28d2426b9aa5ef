"""SwiftNet (single scale) decoder, ``other_methods.md`` §4.4.

Every block is BN -> ReLU -> conv (SwiftNet's ``_BNReluConv``, pre-activation ordering: the ResNet skips it
was designed for are the pre-ReLU residual sums, see ``resnet18(preact_features=True)``). Width C (128).

    SPP on f_L [B,c_L,h,w]:
        x   = BRC1x1(c_L -> B_t)(f_L)                          # bottleneck, B_t = C (128)
        z_j = up(BRC1x1(B_t -> C_l)(AdaptiveAvgPool(g_j, round(g_j * w/h))(x)))  for g_j in (8, 4, 2); C_l = 42
        y   = BRC1x1(B_t + 3 C_l -> C)([x, z_8, z_4, z_2])      # 128 + 3*42 = 254 -> 128
    ladder, coarse to fine, for i = L-1 .. 1:
        y   = BRC3x3(C -> C)(up(y, size(f_i)) + BRC1x1(c_i -> C)(f_i))       # "last feature" g after i = 1
    logits = BRC1x1(C -> K, bias)(g)                           # [B,K,H/s_1,W/s_1], stride 4

Convs are initialised with Kaiming-normal (fan-out, ReLU), BN with weight 1 and bias 0, as SwiftNet does for
its randomly initialised decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.image.heads.common import check_levels, resize_bilinear
from models.registry import HEADS


class BNReLUConv(nn.Sequential):
    """BatchNorm -> ReLU -> conv ('same' padding; bias only where asked: the classifier)."""

    def __init__(self, cin: int, cout: int, k: int, bias: bool = False) -> None:
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias))


class SpatialPyramidPooling(nn.Module):
    """SwiftNet SPP: ``[B,c_in,h,w] -> [B,out,h,w]``; grids scaled by the aspect ratio of the map (8x16 at 1:2)."""

    def __init__(self, c_in: int, bottleneck: int, level_width: int, out: int, grids: Sequence[int]) -> None:
        super().__init__()
        self.grids = tuple(int(g) for g in grids)
        self.bottleneck = BNReLUConv(c_in, bottleneck, 1)
        self.levels = nn.ModuleList(BNReLUConv(bottleneck, level_width, 1) for _ in self.grids)
        self.fuse = BNReLUConv(bottleneck + len(self.grids) * level_width, out, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        aspect = size[1] / size[0]
        x = self.bottleneck(x)
        parts = [x]
        for g, level in zip(self.grids, self.levels, strict=True):
            pooled = nn.functional.adaptive_avg_pool2d(x, (g, max(1, round(aspect * g))))
            parts.append(resize_bilinear(level(pooled), size))
        return self.fuse(torch.cat(parts, dim=1))


class LadderUpsample(nn.Module):
    """One ladder step: ``up(coarse) + BRC1x1(skip) -> BRC3x3`` at the skip's resolution."""

    def __init__(self, c_skip: int, width: int) -> None:
        super().__init__()
        self.skip = BNReLUConv(c_skip, width, 1)
        self.blend = BNReLUConv(width, width, 3)

    def forward(self, coarse: Tensor, skip: Tensor) -> Tensor:
        skip = self.skip(skip)
        return self.blend(resize_bilinear(coarse, skip.shape[-2:]) + skip)


@HEADS.register("swiftnet")
class SwiftNetHead(nn.Module):
    """SwiftNet decoder: ``forward([f_1..f_L]) -> logits [B,K,H/s_1,W/s_1]`` (stride 4 for tcseg backbones).

    Args:
        in_channels, in_strides: from the backbone.
        num_classes: K.
        width: C, the SPP output and ladder width (default 128).
        spp_bottleneck: SPP bottleneck width (default C).
        spp_level_width: width of each pooled level (default bottleneck // 3 = 42).
        spp_grids: pooling grid rows per level (default 8, 4, 2; columns scaled by the aspect ratio).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        num_classes: int,
        width: int | None = None,
        spp_bottleneck: int | None = None,
        spp_level_width: int | None = None,
        spp_grids: Sequence[int] = (8, 4, 2),
    ) -> None:
        super().__init__()
        check_levels("swiftnet", in_channels, in_strides, 2)
        c = int(width or 128)
        bt = int(spp_bottleneck or c)
        lw = int(spp_level_width or max(1, bt // 3))
        self.width = c
        self.feature_channels = c
        self.output_stride = int(in_strides[0])
        self.feature_stride = int(in_strides[0])
        self.crop_output = False
        self.spp = SpatialPyramidPooling(in_channels[-1], bt, lw, c, spp_grids)
        # ladder[0] joins the stride-s_{L-1} skip, ..., ladder[-1] the finest one.
        self.ladder = nn.ModuleList(LadderUpsample(ci, c) for ci in reversed(in_channels[:-1]))
        self.logits = BNReLUConv(c, num_classes, 1, bias=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def last_feature(self, feats: Sequence[Tensor]) -> Tensor:
        """``[f_1..f_L] -> g [B,C,H/s_1,W/s_1]``: the ladder output before the logits block."""
        y = self.spp(feats[-1])
        for up, skip in zip(self.ladder, reversed(feats[:-1]), strict=True):
            y = up(y, skip)
        return y

    def classify(self, g: Tensor) -> Tensor:
        """``g [B,C,h,w] -> logits [B,K,h,w]`` (BN-ReLU-1x1 conv)."""
        return self.logits(g)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """``[f_1..f_L] -> logits [B,K,H/s_1,W/s_1]``."""
        return self.classify(self.last_feature(feats))
