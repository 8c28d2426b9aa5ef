"""Helpers shared by the decode heads: conv-BN-ReLU blocks, resizing, and checks on the input levels."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from config.errors import ConfigError


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> BatchNorm -> ReLU, 'same' padding."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )


def resize_bilinear(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize with ``align_corners=False``; a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def check_levels(head: str, in_channels: Sequence[int], in_strides: Sequence[int], min_levels: int) -> None:
    """Common sanity checks on the widths and strides a head is built from (``ConfigError`` on failure)."""
    if len(in_channels) != len(in_strides):
        raise ConfigError(f"head '{head}': {len(in_channels)} channels but {len(in_strides)} strides given")
    if len(in_channels) < min_levels:
        raise ConfigError(f"head '{head}' needs at least {min_levels} feature levels, got {len(in_channels)}")
    if any(b <= a for a, b in zip(in_strides, in_strides[1:], strict=False)):
        raise ConfigError(f"head '{head}': feature strides must increase, got {list(in_strides)}")
