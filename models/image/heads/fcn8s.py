"""FCN-8s head (pytorch-semseg lineage), ``other_methods.md`` §1.6.

Uses the backbone levels at strides 8, 16 and 32 (``pool3``, ``pool4``, ``pool5`` for VGG-16):

    s   = score_fr(Drop(ReLU(fc7(Drop(ReLU(fc6(pool5)))))))          # fc6: 7x7 conv, fc7: 1x1; [B,K,...]
    u2  = up2(s)        + crop(score_pool4(pool4), offset 5)           # learned transposed conv k4 s2
    u4  = up_pool4(u2)  + crop(score_pool3(pool3), offset 9)           # "last feature" g, stride 8, K channels
    out = crop(up8(u4), offset 31)                                     # transposed conv k16 s8 -> stride 1

Two geometries:

- ``reference``: with ``vgg16(fcn_reference=True)`` (conv1 padding 100, ceil-mode pools). fc6 has no padding,
  the transposed convs no padding, and the crops use the reference offsets 5/9/31. :meth:`classify` returns the
  up8 map cropped at offset 31 on both axes, which is at least as large as the input and aligned with it at the
  top-left corner; the segmentor crops it to the input size (``crop_output = True``). Output equals input size
  for any input size.
- ``aligned`` (for backbones without the padding-100 trick, e.g. ``tiny_cnn``, ``resnet18``): fc6 is padded
  ('same'), the transposed convs are padded to scale by exactly 2 and 8, and a skip of a different size (odd
  inputs) is matched by bilinear resizing instead of cropping. Logits are ``8 x`` the stride-8 map and are
  resized to the input size by the segmentor when they differ.

The transposed convs start as bilinear kernels; ``learned_upsampling=False`` freezes them (the reference's
fixed-bilinear variant).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from config.errors import ConfigError
from models.image.heads.common import check_levels, resize_bilinear
from models.registry import HEADS

GEOMETRIES = ("reference", "aligned")
_CROP_POOL4, _CROP_POOL3, _CROP_OUT = 5, 9, 31  # reference offsets for the padding-100 VGG-16


def bilinear_kernel(channels: int, k: int) -> Tensor:
    """``[C, C, k, k]`` transposed-conv weight that upsamples each channel bilinearly (no cross-talk)."""
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    r = 1 - (torch.arange(k, dtype=torch.float32) - center).abs() / factor
    w = torch.zeros(channels, channels, k, k)
    idx = torch.arange(channels)
    w[idx, idx] = r[:, None] * r[None, :]
    return w


def _crop(x: Tensor, offset: int, size: Sequence[int]) -> Tensor:
    """``x[..., o:o+h, o:o+w]``; the reference crop of a skip map (its size is checked: no silent clipping)."""
    h, w = int(size[0]), int(size[1])
    if x.shape[-2] < offset + h or x.shape[-1] < offset + w:
        raise RuntimeError(
            f"FCN-8s crop at offset {offset} to {h}x{w} does not fit a {tuple(x.shape[-2:])} map; "
            "the reference geometry needs vgg16(fcn_reference=True)"
        )
    return x[..., offset : offset + h, offset : offset + w]


@HEADS.register("fcn8s")
class FCN8sHead(nn.Module):
    """FCN-8s: ``forward([..., f_8, f_16, f_32]) -> logits [B,K,>=H,>=W]`` at stride 1 (see module docstring).

    Args:
        in_channels, in_strides: from the backbone; the levels at strides 8, 16 and 32 are used.
        num_classes: K.
        width: alias of ``fc_width``.
        fc_width: width of fc6/fc7 (reference 4096; use e.g. 64 in tests).
        geometry: ``"reference"`` (padding-100 VGG-16, crops 5/9/31) or ``"aligned"`` (any backbone).
        learned_upsampling: train the bilinear-initialised transposed convs (reference default) or freeze them.
        dropout: Dropout2d probability after fc6 and fc7 (PyTorch default 0.5, as the reference).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        num_classes: int,
        width: int | None = None,
        *,
        fc_width: int | None = None,
        geometry: str = "aligned",
        learned_upsampling: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_levels("fcn8s", in_channels, in_strides, 3)
        if geometry not in GEOMETRIES:
            raise ConfigError(f"fcn8s geometry '{geometry}' is unknown; use one of {', '.join(GEOMETRIES)}")
        if width is not None and fc_width is not None and width != fc_width:
            raise ConfigError(f"fcn8s: width={width} and fc_width={fc_width} disagree; give only fc_width")
        strides = list(in_strides)
        if not all(s in strides for s in (8, 16, 32)):
            raise ConfigError(f"head 'fcn8s' needs backbone levels at strides 8, 16 and 32, got {strides}")
        self.levels = tuple(strides.index(s) for s in (8, 16, 32))
        c3, c4, c5 = (int(in_channels[i]) for i in self.levels)
        fw = int(fc_width or width or 4096)
        self.fc_width = fw
        self.geometry = geometry
        ref = geometry == "reference"
        self.output_stride = 1
        self.feature_stride = 8  # g = u4, the fused class scores at stride 8 (nominal in the reference)
        self.feature_channels = num_classes
        self.crop_output = ref  # reference output is larger than the input: crop, never resize

        self.fc6 = nn.Conv2d(c5, fw, 7, padding=0 if ref else 3)
        self.fc7 = nn.Conv2d(fw, fw, 1)
        self.drop6, self.drop7 = nn.Dropout2d(dropout), nn.Dropout2d(dropout)
        self.score_fr = nn.Conv2d(fw, num_classes, 1)
        self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
        self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
        # Reference: no padding (sizes 2n+2, 8n+8, absorbed by the crops); aligned: padded to exactly 2n, 8n.
        self.up2 = nn.ConvTranspose2d(
            num_classes, num_classes, 4, stride=2, padding=0 if ref else 1, bias=False
        )
        self.up_pool4 = nn.ConvTranspose2d(
            num_classes, num_classes, 4, stride=2, padding=0 if ref else 1, bias=False
        )
        self.up8 = nn.ConvTranspose2d(
            num_classes, num_classes, 16, stride=8, padding=0 if ref else 4, bias=False
        )
        for up in (self.up2, self.up_pool4, self.up8):
            with torch.no_grad():
                up.weight.copy_(bilinear_kernel(num_classes, up.kernel_size[0]))
            up.weight.requires_grad_(learned_upsampling)

    def _skip(self, x: Tensor, offset: int, size: Sequence[int]) -> Tensor:
        if self.geometry == "reference":
            return _crop(x, offset, size)
        return resize_bilinear(x, size)  # aligned maps differ at most by rounding on odd sizes

    def last_feature(self, feats: Sequence[Tensor]) -> Tensor:
        """``feats -> u4 [B,K,h8,w8]``: fused class scores at stride 8 before the final ×8 upsampling."""
        pool3, pool4, pool5 = (feats[i] for i in self.levels)
        s = self.score_fr(self.drop7(torch.relu(self.fc7(self.drop6(torch.relu(self.fc6(pool5)))))))
        u2 = self.up2(s)
        u2 = u2 + self._skip(self.score_pool4(pool4), _CROP_POOL4, u2.shape[-2:])
        u4 = self.up_pool4(u2)
        return u4 + self._skip(self.score_pool3(pool3), _CROP_POOL3, u4.shape[-2:])

    def classify(self, g: Tensor) -> Tensor:
        """``u4 -> logits [B,K,h,w]`` at stride 1 (reference: cropped at offset 31, top-left aligned)."""
        out = self.up8(g)
        if self.geometry == "reference":
            return out[..., _CROP_OUT:, _CROP_OUT:]
        return out

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """``feats -> logits`` at stride 1; see the module docstring for their size."""
        return self.classify(self.last_feature(feats))
