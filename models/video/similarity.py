"""SSP similarity modules (``video_model_cfg.sim_op``, ``ssp.md`` §3.4) and mixing ops (§3.5).

A similarity module takes the registered previous stride-4 features ``F`` and the current ones ``G`` (both
``[B,E,h,w]``; ``E`` comes from the backbone's ``feature_info``, never hard-coded) and returns a weight map
``s [B,1,h,w]`` in [0, 1]: the fused output is ``s * warped_past + (1 - s) * current``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import Registry

SIMILARITY = Registry("similarity op")
MIXING = Registry("prediction mixing op")


def _conv_bn_relu(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=True), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@SIMILARITY.register("conv")
class ConvSimilarity(nn.Module):
    """``concat[F, G]`` -> conv3x3 2E->E, BN, ReLU -> conv3x3 E->E/2, BN, ReLU -> conv1x1 -> sigmoid.

    207,841 parameters for E = 96 (Hiera-S), as in the reference.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        e = channels
        self.net = nn.Sequential(
            *_conv_bn_relu(2 * e, e, 3), *_conv_bn_relu(e, e // 2, 3), nn.Conv2d(e // 2, 1, 1), nn.Sigmoid()
        )

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        if g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous():
            f = f.contiguous(memory_format=torch.channels_last)  # else the concatenation is converted again
        return self.net(torch.cat([f, g], dim=1))


@SIMILARITY.register("convbase")
class ConvBaseSimilarity(nn.Module):
    """The ``conv`` head on ``F`` only: conv3x3 E->E/2, BN, ReLU -> conv1x1 -> sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        e = channels
        self.net = nn.Sequential(*_conv_bn_relu(e, e // 2, 3), nn.Conv2d(e // 2, 1, 1), nn.Sigmoid())

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        return self.net(f)


@SIMILARITY.register("cossim")
class CosineSimilarity(nn.Module):
    """Parameter-free: per-pixel cosine over channels, clamped to [0, 1], to the 4th power, capped at 0.95."""

    def __init__(self, channels: int) -> None:
        super().__init__()

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        cos = F.cosine_similarity(f.float(), g.float(), dim=1, eps=1e-8).unsqueeze(1)
        return cos.clamp(0.0, 1.0).pow(4).clamp_max(0.95).to(f.dtype)


class _ConstantSimilarity(nn.Module):
    value = 0.0

    def __init__(self, channels: int) -> None:
        super().__init__()

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        return torch.full_like(g[:, :1], self.value)


@SIMILARITY.register("constant")
class ZeroSimilarity(_ConstantSimilarity):
    """``s = 0``: the output is the current prediction only (the "no interpolation" ablation). The reference's
    code comment claims the opposite; its behaviour is s = 0, and so is ours."""

    value = 0.0


@SIMILARITY.register("reuse")
class OneSimilarity(_ConstantSimilarity):
    """``s = 1``: pure propagation of the registered past."""

    value = 1.0


@SIMILARITY.register("avg")
class ScalarSimilarity(nn.Module):
    """``s = sigmoid(w)`` for one learnt scalar ``w`` (initialised to 0: ``s = 0.5``), the same for every pixel.

    The reference clamps ``w`` itself to [0, 1]: once an update pushes it outside, its gradient is zero and it never
    comes back. The sigmoid keeps ``s`` in (0, 1) with a gradient everywhere. (A checkpoint trained with the clamp
    loads, but its ``weight`` then means ``sigmoid(weight)``.)
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(0.0))

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        return torch.sigmoid(self.weight).expand_as(g[:, :1]).to(g.dtype)


# ---------------------------------------------------------------------------------------------- mixing ops
@MIXING.register("id")
class IdentityMixing(nn.Module):
    """Leave the pair (warped past logits, current logits) unchanged (every shipped config)."""

    def __init__(self, num_classes: int, layers: int = 1) -> None:
        super().__init__()

    def forward(self, past: Tensor, cur: Tensor) -> tuple[Tensor, Tensor]:
        return past, cur


class _ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv, LayerNorm over channels, MLP x4 with GELU, residual (on ``[B,C,H,W]``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        return x + self.mlp(self.norm(y)).permute(0, 3, 1, 2)


@MIXING.register("conv")
class ConvMixing(nn.Module):
    """``2d_conv`` of the reference: ConvNeXt blocks on ``concat[past, cur]`` (2K channels), split back."""

    def __init__(self, num_classes: int, layers: int = 1) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[_ConvNeXtBlock(2 * num_classes) for _ in range(layers)])

    def forward(self, past: Tensor, cur: Tensor) -> tuple[Tensor, Tensor]:
        out = self.blocks(torch.cat([past, cur], dim=1))
        return out.chunk(2, dim=1)
