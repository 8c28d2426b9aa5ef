"""``tiny_cnn``: a plain 4-stage conv net backbone for fast tests (registered in ``BACKBONES``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from config.errors import ConfigError
from models.image.backbones import Backbone
from models.registry import BACKBONES


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyCNN(Backbone):
    """A plain 4-stage conv net for fast tests: outputs ``[B,w_i,ceil(H/s_i),ceil(W/s_i)]``, s = 4/8/16/32.

    Stage 1 is two stride-2 conv-BN-ReLU; stages 2-4 are one stride-2 and one stride-1 conv-BN-ReLU.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128)) -> None:
        if len(widths) != 4:
            raise ConfigError(f"tiny_cnn needs 4 widths, got {list(widths)}")
        super().__init__(widths, [4, 8, 16, 32])
        self.name = "tiny_cnn"
        w1, w2, w3, w4 = widths
        self.stages = nn.ModuleList(
            [
                nn.Sequential(_conv_bn_relu(3, w1, 2), _conv_bn_relu(w1, w1, 2)),
                nn.Sequential(_conv_bn_relu(w1, w2, 2), _conv_bn_relu(w2, w2)),
                nn.Sequential(_conv_bn_relu(w2, w3, 2), _conv_bn_relu(w3, w3)),
                nn.Sequential(_conv_bn_relu(w3, w4, 2), _conv_bn_relu(w4, w4)),
            ]
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


@BACKBONES.register("tiny_cnn")
def tiny_cnn(widths: Sequence[int] = (16, 32, 64, 128)) -> TinyCNN:
    """The tiny test backbone (≈ 0.3 M parameters with the default widths)."""
    return TinyCNN(widths)
