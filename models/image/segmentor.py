"""The image segmentation model: a backbone joined to a head, with the interface of ``ssp.md`` §2.3.

``encode`` / ``decode`` / ``decode_last_feature`` / ``classify`` are the pieces the video wrappers reuse;
``forward`` is the plain image model (logits at the input size). :func:`build_segmentor` takes explicit
arguments; turning a config into these arguments happens elsewhere, in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from config.errors import ConfigError
from models.image.backbones import Backbone, FeatureInfo, build_backbone
from models.image.pretrained import load_backbone_weights, load_fcn8s_classifier_weights
from models.registry import BACKBONES, HEADS

UPSAMPLING_MODES = ("bicubic", "bilinear", "nearest")

# The reference pairs each Hiera size with one UPerNet width (ssp.md §2.1 table, model_cfg.checkpoint_model).
HIERA_UPERNET_WIDTHS = {"sam2_hiera_tiny": 128, "sam2_hiera_small": 256, "sam2_hiera_base_plus": 512}
# Hugging Face's upernet-convnext-* models (the reference's "UPerNet" arch) use a 512-wide UperNet.
CONVNEXT_UPERNET_WIDTH = 512


def default_head_width(backbone: str, head: str, channels: Sequence[int]) -> int | None:
    """The head width used when none is given.

    - ``upernet``: 128 / 256 / 512 on Hiera tiny / small / base_plus (the reference table), 512 on ConvNeXt (as
      upernet-convnext); on other backbones half the width of the coarsest level, clamped to [64, 512]
      (resnet18, vgg16: 256; tiny_cnn: 64).
    - ``swiftnet``: 128 (SwiftNet's ``num_features``).
    - ``fcn8s``: 4096 (the reference fc6/fc7 width).
    - any other head: ``None`` (the head's own default).
    """
    if head == "upernet":
        if backbone in HIERA_UPERNET_WIDTHS:
            return HIERA_UPERNET_WIDTHS[backbone]
        if backbone.startswith("convnext_"):
            return CONVNEXT_UPERNET_WIDTH
        return min(512, max(64, int(channels[-1]) // 2))
    if head == "swiftnet":
        return 128
    if head == "fcn8s":
        return 4096
    return None


class Segmentor(nn.Module):
    """Backbone + head. ``forward(x [B,3,H,W]) -> logits [B,K,H,W]``.

    Args:
        backbone: a :class:`Backbone` (``channels``/``strides`` describe its outputs).
        head: a registered head built from those widths (``last_feature``, ``classify``, ``output_stride``).
        num_classes: K.
        upsampling: how :meth:`forward` brings the head's logits to the input size: ``bicubic`` (reference),
            ``bilinear`` or ``nearest`` (``align_corners=False``). Heads with ``crop_output`` (FCN-8s reference
            geometry) are cropped instead.
    """

    def __init__(
        self, backbone: Backbone, head: nn.Module, num_classes: int, upsampling: str = "bicubic"
    ) -> None:
        super().__init__()
        if upsampling not in UPSAMPLING_MODES:
            raise ConfigError(
                f"upsampling '{upsampling}' is unknown; use one of {', '.join(UPSAMPLING_MODES)}"
            )
        crop = bool(getattr(head, "crop_output", False))
        if crop != (backbone.geometry == "fcn_reference"):
            # The padding-100 maps are offset from the image; only the reference FCN-8s crops undo that.
            raise ConfigError(
                "the reference FCN-8s geometry needs both vgg16(fcn_reference=True) and head fcn8s with "
                f"geometry='reference' (got backbone '{backbone.name}' with geometry '{backbone.geometry}' and "
                f"a head with crop_output={crop})"
            )
        self.backbone = backbone
        self.head = head
        self.num_classes = int(num_classes)
        self.upsampling = upsampling

    # -- description ----------------------------------------------------------------------------------------
    @property
    def feature_info(self) -> FeatureInfo:
        """Channels and strides of the :meth:`encode` outputs (video modules take their widths from here)."""
        return self.backbone.feature_info

    @property
    def output_stride(self) -> int:
        """Stride of :meth:`decode` / :meth:`classify` logits (4 for upernet/swiftnet, 1 for fcn8s)."""
        return int(self.head.output_stride)

    @property
    def feature_stride(self) -> int:
        """Stride of the last feature ``g`` (4 for upernet/swiftnet, 8 for fcn8s)."""
        return int(self.head.feature_stride)

    @property
    def feature_channels(self) -> int:
        """Width of the last feature ``g``."""
        return int(self.head.feature_channels)

    def check_input_size(self, h: int, w: int) -> None:
        """Raise :class:`ConfigError` when the backbone cannot take an ``h`` x ``w`` input."""
        self.backbone.check_input_size(h, w)

    # -- the pieces -----------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> list[Tensor]:
        """``x [B,3,H,W] -> [f_1 [B,c_1,H/s_1,W/s_1], ...]`` (increasing stride; see :attr:`feature_info`)."""
        return self.backbone(x)

    def decode(self, feats: Sequence[Tensor]) -> Tensor:
        """``feats -> logits [B,K,H/o,W/o]`` at the head's output stride ``o`` (not resized), NCHW-contiguous."""
        # With channels_last weights (models.fast_path) the classifier returns NHWC logits; resizing K-channel maps,
        # and elementwise work mixing them with NCHW maps, is several times slower in that layout: K is small, so
        # one copy here is cheaper (a no-op for NCHW logits).
        return self.head(feats).contiguous()

    def decode_last_feature(self, feats: Sequence[Tensor]) -> Tensor:
        """``feats -> g [B,feature_channels,H/f,W/f]``: the head's feature before its classifier."""
        return self.head.last_feature(feats)

    def classify(self, g: Tensor) -> Tensor:
        """``g -> logits`` at the head's output stride (``decode == classify . decode_last_feature``)."""
        return self.head.classify(g)

    def resize_logits(self, logits: Tensor, size: Sequence[int]) -> Tensor:
        """Head logits -> ``[B,K,*size]``: cropped for the FCN-8s reference geometry, else interpolated."""
        h, w = int(size[0]), int(size[1])
        if self.head.crop_output:
            if logits.shape[-2] < h or logits.shape[-1] < w:
                raise RuntimeError(f"logits {tuple(logits.shape[-2:])} are smaller than the input {h}x{w}")
            return logits[..., :h, :w]
        if tuple(logits.shape[-2:]) == (h, w):
            return logits
        align = None if self.upsampling == "nearest" else False
        return F.interpolate(logits, size=(h, w), mode=self.upsampling, align_corners=align)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B,3,H,W] -> logits [B,K,H,W]``."""
        return self.resize_logits(self.decode(self.encode(x)), x.shape[-2:])


def build_segmentor(
    backbone: str,
    head: str,
    num_classes: int,
    *,
    head_width: int | None = None,
    upsampling: str = "bicubic",
    pretrained_backbone: str | Path | None = None,
    head_kwargs: dict[str, Any] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
) -> Segmentor:
    """Build a :class:`Segmentor` from registered names.

    Args:
        backbone: a name in ``BACKBONES`` (``sam2_hiera_{tiny,small,base_plus}``, ``resnet18``, ``vgg16``,
            ``tiny_cnn``).
        head: a name in ``HEADS`` (``upernet``, ``fcn8s``, ``swiftnet``).
        num_classes: K >= 1.
        head_width: the head width (fcn8s: fc6/fc7 width); default from :func:`default_head_width`.
        upsampling: ``bicubic`` (reference), ``bilinear`` or ``nearest``.
        pretrained_backbone: a local weights file for the backbone (see :mod:`models.image.pretrained`);
            ``None`` keeps the random initialisation. With ``vgg16`` + ``fcn8s`` the same file also
            initialises fc6/fc7/score_fr from the ImageNet classifier, as the reference does.
        head_kwargs: extra head arguments (e.g. ``fc_width``, ``geometry``, ``pool_bins``, ``spp_grids``).
        backbone_kwargs: extra backbone arguments (e.g. ``widths`` for tiny_cnn).

    Pairings set by default (override through the kwargs): ``vgg16`` + ``fcn8s`` uses the reference geometry
    (``fcn_reference=True``, ``geometry='reference'``); ``resnet18`` + ``swiftnet`` feeds the pre-ReLU stage
    outputs (``preact_features=True``), as SwiftNet does.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    # Unknown names fail here, with the closest known name, before anything is built.
    BACKBONES.get(backbone)
    HEADS.get(head)
    bkw = dict(backbone_kwargs or {})
    hkw = dict(head_kwargs or {})
    if backbone == "vgg16" and head == "fcn8s":
        bkw.setdefault("fcn_reference", True)
        hkw.setdefault("geometry", "reference" if bkw["fcn_reference"] else "aligned")
    if backbone == "resnet18" and head == "swiftnet":
        bkw.setdefault("preact_features", True)

    bb = build_backbone(backbone, **bkw)
    width = head_width
    if width is None and not (head == "fcn8s" and "fc_width" in hkw):
        width = default_head_width(backbone, head, bb.channels)
    hd = HEADS.build(
        head, in_channels=bb.channels, in_strides=bb.strides, num_classes=num_classes, width=width, **hkw
    )
    model = Segmentor(bb, hd, num_classes, upsampling=upsampling)
    if pretrained_backbone is not None:
        load_backbone_weights(bb, pretrained_backbone)
        if backbone == "vgg16" and head == "fcn8s":
            load_fcn8s_classifier_weights(hd, pretrained_backbone)
    return model


__all__ = ["HIERA_UPERNET_WIDTHS", "UPSAMPLING_MODES", "Segmentor", "build_segmentor", "default_head_width"]
