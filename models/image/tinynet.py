"""TinyNet: the small online-distillation student (ARTHuS lineage; ``other_methods.md`` §3.5).

A stride-8 trunk (stem, a residual block with a 9x9 convolution, one more convolution), a pyramid pooling module
with four grids, and a head that upsamples x4 then x2 back to the input size. About 0.83 M parameters for 19
classes at ``width=64``.

Differences from the reference, on purpose:

- the pyramid pools are *adaptive* (grids 1x1, 3x2, 5x4, 9x8), so the network works at any input size (the
  reference hard-codes the pool kernels for 1080p, which gives the same bins there);
- ``bn`` chooses batch statistics in evaluation too (``batch_stats``, the reference) or ordinary BatchNorm with
  running statistics (``running_stats``);
- ``upsampling`` chooses the mode of the two head upsamplings (the description does not say; bilinear default).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.errors import ConfigError

BN_MODES = ("batch_stats", "running_stats")
HEAD_UPSAMPLING = ("bilinear", "nearest")

# Pyramid grids as (rows H, cols W). The reference pools the 135x240 map (1080x1920 input) with non-overlapping
# kernels (135,240), (45,120), (27,60), (15,30): 135/135 x 240/240 = 1x1, 135/45 x 240/120 = 3x2,
# 135/27 x 240/60 = 5x4, 135/15 x 240/30 = 9x8. Adaptive pooling to these grids gives the same bins at 1080p.
PYRAMID_GRIDS: tuple[tuple[int, int], ...] = ((1, 1), (3, 2), (5, 4), (9, 8))

# The trunk's stride: one stride-2 convolution and two 2x2 max-pools.
STRIDE = 8


def _bn(channels: int, bn: str) -> nn.BatchNorm2d:
    # track_running_stats=False makes BatchNorm normalise with the batch's statistics in eval mode as well.
    return nn.BatchNorm2d(channels, track_running_stats=(bn == "running_stats"))


def _conv_bn_relu(cin: int, cout: int, bn: str, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    # "Same" padding; conv biases are kept (nn.Conv2d's default), as the parameter count of §3.5 assumes.
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2), _bn(cout, bn), nn.ReLU(inplace=True)
    )


class PyramidPooling(nn.Module):
    """Four adaptive average pools (:data:`PYRAMID_GRIDS`), a 3x3 conv on the three finer grids, ReLU, nearest
    upsampling back, concatenation with the input, BatchNorm.

    ``x [B,c,h,w] -> [B,5c,h,w]``.
    """

    def __init__(self, channels: int, bn: str) -> None:
        super().__init__()
        self.grids = PYRAMID_GRIDS
        # No conv on the 1x1 grid (the reference has none there: a 3x3 conv on one pixel is a 1x1 conv).
        self.convs = nn.ModuleList(
            [nn.Identity()] + [nn.Conv2d(channels, channels, 3, padding=1) for _ in self.grids[1:]]
        )
        self.bn = _bn(channels * (len(self.grids) + 1), bn)

    def pooled(self, x: Tensor) -> list[Tensor]:
        """``x [B,c,h,w] -> [[B,c,1,1], [B,c,3,2], [B,c,5,4], [B,c,9,8]]`` (before the convs)."""
        return [F.adaptive_avg_pool2d(x, grid) for grid in self.grids]

    def forward(self, x: Tensor) -> Tensor:
        """``x [B,c,h,w] -> [B,5c,h,w]``."""
        size = x.shape[-2:]
        branches = [
            F.interpolate(F.relu(conv(p)), size=size, mode="nearest")
            for conv, p in zip(self.convs, self.pooled(x), strict=True)
        ]
        return self.bn(torch.cat([x, *branches], dim=1))


class TinyNet(nn.Module):
    """The TinyNet student. ``forward(x [B,3,H,W]) -> logits [B,C,H,W]``.

    Inputs whose sides are not multiples of 8 are padded at the bottom and right by edge replication to the next
    multiple of 8 and the logits are cropped back: pixels stay aligned with the input (interpolating the logits
    of a floored stride-8 map would shift them by up to 7 pixels).

    Args:
        num_classes: C >= 1.
        bn: ``batch_stats`` (reference: BatchNorm uses batch statistics in evaluation too, so eval outputs depend
            on the batch) or ``running_stats`` (ordinary BatchNorm).
        upsampling: mode of the head's x4 and x2 upsamplings, ``bilinear`` (``align_corners=False``) or
            ``nearest``.
        width: channel width of the trunk and the head (64 in the reference).
    """

    def __init__(
        self,
        num_classes: int,
        bn: Literal["batch_stats", "running_stats"] = "batch_stats",
        upsampling: Literal["bilinear", "nearest"] = "bilinear",
        width: int = 64,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
        if bn not in BN_MODES:
            raise ConfigError(f"tinynet bn '{bn}' is unknown; use one of {', '.join(BN_MODES)}")
        if upsampling not in HEAD_UPSAMPLING:
            raise ConfigError(
                f"tinynet upsampling '{upsampling}' is unknown; use one of {', '.join(HEAD_UPSAMPLING)}"
            )
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"tinynet width must be a positive integer, got {width!r}")
        self.num_classes, self.bn_mode, self.upsampling, self.width = num_classes, bn, upsampling, width
        w = width
        # stem (/8): conv s2, conv + pool 2, conv + pool 2
        self.stem = nn.Sequential(
            _conv_bn_relu(3, w, bn, stride=2),
            _conv_bn_relu(w, w, bn),
            nn.MaxPool2d(2),
            _conv_bn_relu(w, w, bn),
            nn.MaxPool2d(2),
        )
        # residual block: 3x3, 9x9 (the wide receptive field of the reference), 3x3; identity skip from the stem
        self.res = nn.Sequential(
            _conv_bn_relu(w, w, bn), _conv_bn_relu(w, w, bn, kernel=9), _conv_bn_relu(w, w, bn)
        )
        self.conv = _conv_bn_relu(w, w, bn)
        self.ppm = PyramidPooling(w, bn)
        self.head_conv = nn.Conv2d(5 * w, w, 3, padding=1)
        self.dropout = nn.Dropout2d(0.25)
        self.cls_conv = nn.Conv2d(w, num_classes, 3, padding=1)
        self.out_conv = nn.Conv2d(num_classes, num_classes, 3, padding=1)

    def _up(self, x: Tensor, factor: int) -> Tensor:
        align = None if self.upsampling == "nearest" else False
        return F.interpolate(x, scale_factor=factor, mode=self.upsampling, align_corners=align)

    def features(self, x: Tensor) -> Tensor:
        """``x [B,3,H,W]`` (H, W multiples of 8) ``-> [B,5*width,H/8,W/8]``: the pyramid-pooled trunk."""
        s = self.stem(x)
        t = self.conv(self.res(s) + s)
        return self.ppm(t)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B,3,H,W] -> logits [B,C,H,W]``."""
        h, w = x.shape[-2:]
        ph, pw = -h % STRIDE, -w % STRIDE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        y = self.dropout(F.relu(self.head_conv(self.features(x))))
        y = F.relu(self.cls_conv(self._up(y, 4)))
        y = self.out_conv(self._up(y, 2))
        return y[..., :h, :w]


__all__ = ["BN_MODES", "HEAD_UPSAMPLING", "PYRAMID_GRIDS", "PyramidPooling", "STRIDE", "TinyNet"]
