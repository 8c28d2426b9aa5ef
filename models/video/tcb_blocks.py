"""The temporal context blocks of TCB (``ssp.md`` §4.3-4.4): OCR and PPM over the stride-32 maps of a frame window.

Both blocks take the window's coarsest maps ``f4`` [B,F,C4,h,w], frame 0 the current one and frame ``j`` the frame
``j`` steps back (``[t, t-1, t-2, t-3]`` in the reference), and return a context map [B,C4,h,w] for the current
frame that :class:`models.video.tcb.TCB` fuses into its stride-32 map. Every width derives from ``C4`` (the image
model's ``feature_info``; the reference hard-codes 768) unless given explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PPM_WEIGHT_ORDERS = ("aligned", "reference")
PPM_REDUCES = ("mean", "sum")


def conv_bn_relu(cin: int, cout: int, kernel: int = 1) -> nn.Sequential:
    """conv (no bias, BN follows) -> BN -> ReLU, ``same`` padding."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ObjectAttention(nn.Module):
    """HRNet-OCR's object attention (scale 1): pixels of the current frame attend to the K region descriptors.

    Args:
        channels: width of the pixel features and of the region descriptors.
        key_channels: width of queries, keys and values (the reference: half of ``channels``).
    """

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.f_pixel = nn.Sequential(
            conv_bn_relu(channels, key_channels), conv_bn_relu(key_channels, key_channels)
        )
        self.f_object = nn.Sequential(
            conv_bn_relu(channels, key_channels), conv_bn_relu(key_channels, key_channels)
        )
        self.f_down = conv_bn_relu(channels, key_channels)
        self.f_up = conv_bn_relu(key_channels, channels)  # back to the pixel width

    def forward(self, z: Tensor, regions: Tensor) -> Tensor:
        """``z`` [B,C,h,w] pixel features, ``regions`` [B,C,K,1] -> context [B,C,h,w]."""
        b, _, h, w = z.shape
        query = self.f_pixel(z).flatten(2).transpose(1, 2)  # [B,hw,key]
        key = self.f_object(regions).flatten(2)  # [B,key,K]
        value = self.f_down(regions).flatten(2).transpose(1, 2)  # [B,K,key]
        sim = torch.softmax(query @ key * self.key_channels**-0.5, dim=-1)  # [B,hw,K]
        ctx = (sim @ value).transpose(1, 2).reshape(b, self.key_channels, h, w)
        return self.f_up(ctx)


class OCRBlock(nn.Module):
    """The clip OCR block (reference ``Clip_OCR_Block``, ``ssp.md`` §4.3).

    Per frame an auxiliary (unsupervised) class map ``A_j`` and a feature ``Z_j``; soft object regions
    ``region_j[k] = sum_p softmax_p(A_j[k]) Z_j(p)`` averaged over the frames; the current frame's pixels attend to
    them; ``concat[ctx, Z_t]`` -> 1x1 conv -> final 1x1.

    Args:
        in_channels: C4, the width of the stride-32 maps.
        num_classes: K, the number of soft object regions.
        channels: width of ``Z`` and of the auxiliary 3x3 conv (reference: C4).
        key_channels: width of the attention (reference: ``channels // 2``).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int, key_channels: int) -> None:
        super().__init__()
        self.aux = nn.Sequential(
            conv_bn_relu(in_channels, channels, 3), nn.Dropout(0.05), nn.Conv2d(channels, num_classes, 1)
        )
        self.feat = conv_bn_relu(in_channels, channels, 3)
        self.attention = ObjectAttention(channels, key_channels)
        self.fuse = nn.Sequential(conv_bn_relu(2 * channels, in_channels), nn.Dropout2d(0.05))
        self.head = nn.Conv2d(in_channels, in_channels, 1)

    def forward(self, f4: Tensor) -> Tensor:
        """``f4`` [B,F,C4,h,w] (frame 0 = current) -> context [B,C4,h,w]."""
        b, n = f4.shape[:2]
        flat = f4.flatten(0, 1)
        aux, z = self.aux(flat), self.feat(flat)  # [B*F,K,h,w], [B*F,C,h,w]
        probs = torch.softmax(aux.flatten(2), dim=-1)  # over pixels, per class
        regions = probs @ z.flatten(2).transpose(1, 2)  # [B*F,K,C]
        regions = regions.unflatten(0, (b, n)).mean(1)  # averaged over the frames: [B,K,C]
        z_t = z.unflatten(0, (b, n))[:, 0]
        ctx = self.attention(z_t, regions.transpose(1, 2).unsqueeze(-1))
        return self.head(self.fuse(torch.cat([ctx, z_t], 1)))


class PPMBlock(nn.Module):
    """The clip pyramid-pooling block (reference PPM clip block, never built there; ``ssp.md`` §4.4).

    One global weight per frame, ``w = softmax_j GAP(conv1x1(f4_j))``; per bin ``b`` the frames' pooled maps are
    weighted and reduced (mean or sum), projected to ``channels`` and upsampled; ``concat[f4_t, P_1, ...]`` ->
    3x3 conv -> dropout -> 1x1 back to C4.

    Args:
        in_channels: C4.
        channels: width of each pooled branch and of the bottleneck (reference: 512).
        bins: the pooling grid sizes.
        weight_order: ``aligned`` (each weight multiplies its own frame) or ``reference``: the reference computes
            the weights in the order ``[t-1, t-2, t-3, t]`` but applies them to ``[t, t-1, t-2, t-3]``, so frame
            ``j`` gets the weight of frame ``j + 1`` (the current frame's goes to the oldest one).
        reduce: ``mean`` (reference) or ``sum`` of the weighted maps over the frames.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 512,
        bins: Sequence[int] = (1, 2, 3, 6),
        weight_order: str = "aligned",
        reduce: str = "mean",
    ) -> None:
        super().__init__()
        if weight_order not in PPM_WEIGHT_ORDERS or reduce not in PPM_REDUCES:
            raise ValueError(
                f"weight_order {weight_order!r} / reduce {reduce!r}: see PPM_WEIGHT_ORDERS, PPM_REDUCES"
            )
        self.bins, self.weight_order, self.reduce = tuple(int(b) for b in bins), weight_order, reduce
        self.score = nn.Conv2d(in_channels, 1, 1)
        self.stages = nn.ModuleList(conv_bn_relu(in_channels, channels) for _ in self.bins)
        self.bottleneck = nn.Sequential(
            conv_bn_relu(in_channels + len(self.bins) * channels, channels, 3),
            nn.Dropout(0.1),
            nn.Conv2d(channels, in_channels, 1),
        )

    def frame_weights(self, f4: Tensor) -> Tensor:
        """``f4`` [B,F,C4,h,w] -> the weight each frame's pooled maps are multiplied by, [B,F]."""
        scores = self.score(f4.flatten(0, 1)).mean((-2, -1)).view(f4.shape[:2])  # GAP: one score per frame
        if self.weight_order == "reference":
            # frame j is multiplied by the weight computed from frame j+1 (mod F): the reference's misalignment
            scores = scores.roll(-1, dims=1)
        return torch.softmax(scores, dim=1)

    def forward(self, f4: Tensor) -> Tensor:
        """``f4`` [B,F,C4,h,w] (frame 0 = current) -> context [B,C4,h,w]."""
        b, n = f4.shape[:2]
        size = f4.shape[-2:]
        w = self.frame_weights(f4).view(b, n, 1, 1, 1)
        flat = f4.flatten(0, 1)
        pooled = []
        for bin_, stage in zip(self.bins, self.stages, strict=True):
            p = F.adaptive_avg_pool2d(flat, bin_).unflatten(0, (b, n)) * w  # [B,F,C4,b,b]
            p = p.mean(1) if self.reduce == "mean" else p.sum(1)
            pooled.append(F.interpolate(stage(p), size=size, mode="bilinear", align_corners=False))
        return self.bottleneck(torch.cat([f4[:, 0], *pooled], 1))
