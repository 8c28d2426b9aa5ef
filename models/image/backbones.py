"""Image backbones: multi-scale feature extractors registered in :data:`models.registry.BACKBONES`.

Every backbone maps an image batch ``x: [B, 3, H, W]`` (already normalised by the data pipeline) to a list of
NCHW feature maps in order of increasing stride, and states their widths (:attr:`Backbone.channels`) and
nominal strides (:attr:`Backbone.strides`). Heads and video modules take their widths from these numbers, never
from constants.

Registered names:

========================  ====================  ==================  ========================================
name                      channels              strides             notes
========================  ====================  ==================  ========================================
``sam2_hiera_tiny``       96, 192, 384, 768     4, 8, 16, 32        timm, input H and W multiples of 32
``sam2_hiera_small``      96, 192, 384, 768     4, 8, 16, 32        timm, input H and W multiples of 32
``sam2_hiera_base_plus``  112, 224, 448, 896    4, 8, 16, 32        timm, input H and W multiples of 32
``resnet18``              64, 128, 256, 512     4, 8, 16, 32        timm; optional pre-ReLU stage outputs
``vgg16``                 128, 256, 512, 512    4, 8, 16, 32        pool2..pool5 of timm's VGG-16 layers
``convnext_tiny``         96, 192, 384, 768     4, 8, 16, 32        timm ConvNeXt-T, input H and W multiples of 32
``convnext_small``        96, 192, 384, 768     4, 8, 16, 32        timm ConvNeXt-S, input H and W multiples of 32
``convnext_base``         128, 256, 512, 1024   4, 8, 16, 32        timm ConvNeXt-B, input H and W multiples of 32
``tiny_cnn``              16, 32, 64, 128       4, 8, 16, 32        own tiny conv net for fast tests
========================  ====================  ==================  ========================================

Nothing is ever downloaded here: every timm model is created with ``pretrained=False``; weights come from
local files through :func:`models.image.pretrained.load_backbone_weights`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from config.errors import ConfigError
from models.registry import BACKBONES

# How the files for each backbone are obtained; used in "file not found" / "file does not fit" messages.
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2"
_TV_URL = "https://download.pytorch.org/models"


@dataclass(frozen=True)
class FeatureInfo:
    """Widths and nominal strides of a list of feature maps, finest first (as timm's ``FeatureInfo``)."""

    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.channels)


class Backbone(nn.Module):
    """Base class: ``forward(x [B,3,H,W]) -> [f_1 [B,c_1,H/s_1,W/s_1], ...]`` with ``s_1 < s_2 < ...``.

    Attributes:
        name: the registry name.
        channels: width ``c_i`` of each output.
        strides: nominal stride ``s_i`` of each output.
        input_multiple: input H and W must be multiples of this (1: any size).
        weights_format: ``"sam2"``, ``"imagenet"`` or ``None`` (no pretrained file exists); read by
            :func:`models.image.pretrained.load_backbone_weights`.
        weights_hint: the file(s) to use and where to get them, for error messages.
        geometry: ``"aligned"`` (output ``i`` has size ``ceil or floor(H / s_i)``) or ``"fcn_reference"``
            (VGG-16 with conv1 padding 100 and ceil-mode pooling: sizes are offset and need FCN-8s crops).
    """

    name: str = ""
    weights_format: str | None = None
    weights_hint: str = ""
    geometry: str = "aligned"

    def __init__(self, channels: Sequence[int], strides: Sequence[int], input_multiple: int = 1) -> None:
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.strides = [int(s) for s in strides]
        self.input_multiple = int(input_multiple)

    @property
    def feature_info(self) -> FeatureInfo:
        """Channels and strides of the outputs of :meth:`forward`."""
        return FeatureInfo(tuple(self.channels), tuple(self.strides))

    def weights_module(self) -> nn.Module:
        """The module whose ``state_dict`` keys a pretrained file must match after conversion."""
        return self

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename the keys of a converted pretrained file to :meth:`weights_module`'s (default: unchanged)."""
        return state

    def check_input_size(self, h: int, w: int) -> None:
        """Raise :class:`ConfigError` when an ``h`` x ``w`` input cannot go through this backbone."""
        m = self.input_multiple
        if m > 1 and (h % m or w % m):
            hh, ww = math.ceil(h / m) * m, math.ceil(w / m) * m
            raise ConfigError(
                f"input size {h}x{w} is not a multiple of {m}, which {self._family()} backbones need: "
                f"use e.g. data_cfg.crop_size=[{hh}, {ww}] (or resize/pad the frames to {hh}x{ww})"
            )

    def _family(self) -> str:
        return self.name

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------- SAM2 Hiera


class HieraBackbone(Backbone):
    """SAM2 Hiera image-encoder trunk (timm ``sam2_hiera_*``, ``features_only=True``): 4 stage outputs.

    Input ``[B,3,H,W]`` with H, W multiples of 32 (the 8x8 window position embedding is tiled over the stride-4
    token grid); outputs ``[B,C,H/4,W/4]``, ``[B,2C,H/8,W/8]``, ``[B,4C,H/16,W/16]``, ``[B,8C,H/32,W/32]``.
    """

    weights_format = "sam2"

    def __init__(self, variant: str) -> None:
        # pretrained=False always: timm's pretrained tags resolve to the HF hub, i.e. a download.
        model = timm.create_model(f"sam2_hiera_{variant}", pretrained=False, features_only=True)
        super().__init__(model.feature_info.channels(), model.feature_info.reduction(), input_multiple=32)
        self.name = f"sam2_hiera_{variant}"
        self.weights_hint = (
            f"sam2_hiera_{variant}.pt or sam2.1_hiera_{variant}.pt from Meta's SAM 2 release "
            f"({_SAM2_URL}/072824/sam2_hiera_{variant}.pt or {_SAM2_URL}/092824/sam2.1_hiera_{variant}.pt)"
        )
        # The features_only "getter" wrapper keeps the HieraDet under `.model`, so its state_dict keys carry a
        # `model.` prefix that raw SAM2 trunk keys lack (ecosystem.md §1.2).
        self.body = model

    def _family(self) -> str:
        return "SAM2 Hiera"

    def weights_module(self) -> nn.Module:
        """The inner ``HieraDet`` (keys ``pos_embed``, ``patch_embed.*``, ``blocks.*``), without ``model.``."""
        return self.body.model

    def fast_inference(self, on: bool = True) -> None:
        """Without autograd, reuse the position embedding of a token grid (timm resizes it bicubically on every
        call, about 1 % of a Hiera-S frame at 256x448) until the embedding's weights change."""
        trunk = self.body.model
        if on:
            trunk._pos_embed = functools.partial(_cached_pos_embed, trunk, {})
        else:
            trunk.__dict__.pop("_pos_embed", None)

    def forward(self, x: Tensor) -> list[Tensor]:
        # timm fails with a shape error deep inside the position embedding otherwise; say what to do instead.
        self.check_input_size(x.shape[-2], x.shape[-1])
        return list(self.body(x))


def _cached_pos_embed(trunk: nn.Module, cache: dict, x: Tensor) -> Tensor:
    """timm's ``HieraDet._pos_embed`` (``x`` [B,h,w,C] tokens plus the embedding), with the embedding kept per
    grid size, dtype, device and weight version."""
    if torch.is_grad_enabled():
        return type(trunk)._pos_embed(trunk, x)
    key = (*x.shape[1:3], x.dtype, x.device, trunk.pos_embed._version, trunk.pos_embed_window._version)
    if key not in cache:
        cache.clear()
        cache[key] = type(trunk)._pos_embed(trunk, torch.zeros_like(x[:1]))
    return x + cache[key]


@BACKBONES.register("sam2_hiera_tiny")
def sam2_hiera_tiny() -> HieraBackbone:
    """SAM2 Hiera-T trunk (≈ 27 M parameters)."""
    return HieraBackbone("tiny")


@BACKBONES.register("sam2_hiera_small")
def sam2_hiera_small() -> HieraBackbone:
    """SAM2 Hiera-S trunk (≈ 33.9 M parameters): the SSP student."""
    return HieraBackbone("small")


@BACKBONES.register("sam2_hiera_base_plus")
def sam2_hiera_base_plus() -> HieraBackbone:
    """SAM2 Hiera-B+ trunk (≈ 68.7 M parameters): the KD teacher."""
    return HieraBackbone("base_plus")


# ---------------------------------------------------------------------------------------------- ResNet-18


class ResNetBackbone(Backbone):
    """timm ResNet-18 stages ``layer1..layer4`` at strides 4/8/16/32 (widths 64/128/256/512).

    Args:
        preact_features: return each stage's residual sum *before* its final ReLU, as SwiftNet's skips do
            (the next stage still receives the ReLU'd map). Default: the usual post-ReLU outputs.
    """

    weights_format = "imagenet"

    def __init__(self, preact_features: bool = False) -> None:
        model = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
        super().__init__(model.feature_info.channels(), model.feature_info.reduction())
        self.name = "resnet18"
        self.weights_hint = (
            f"resnet18-f37072fd.pth (torchvision ImageNet weights, {_TV_URL}/resnet18-f37072fd.pth)"
        )
        self.preact_features = preact_features
        # FeatureListNet keeps torchvision's names (conv1, bn1, layer1..layer4) and has dropped `fc`.
        self.body = model
        # The last block's final ReLU is applied in forward instead, so the pre-ReLU sum can be returned. ReLU
        # has no parameters, so the state_dict (and the torchvision key layout) is unchanged.
        for layer in self._layers():
            layer[-1].act2 = nn.Identity()

    def _layers(self) -> list[nn.Module]:
        return [self.body.layer1, self.body.layer2, self.body.layer3, self.body.layer4]

    def weights_module(self) -> nn.Module:
        """The timm feature net, keys ``conv1.*``, ``bn1.*``, ``layer1.*`` .. ``layer4.*`` (no ``fc``)."""
        return self.body

    def forward(self, x: Tensor) -> list[Tensor]:
        b = self.body
        x = b.maxpool(b.act1(b.bn1(b.conv1(x))))
        feats = []
        for layer in self._layers():
            s = layer(x)  # residual sum of the last block, pre-ReLU
            x = F.relu(s)
            feats.append(s if self.preact_features else x)
        return feats


@BACKBONES.register("resnet18")
def resnet18(preact_features: bool = False) -> ResNetBackbone:
    """ResNet-18 (≈ 11.2 M parameters without ``fc``)."""
    return ResNetBackbone(preact_features=preact_features)


# ------------------------------------------------------------------------------------------------ VGG-16


# Indices of the five max-pools in timm's (= torchvision's) VGG-16 `features` Sequential.
_VGG16_POOLS = (4, 9, 16, 23, 30)


class VGG16Backbone(Backbone):
    """VGG-16 conv layers (timm / torchvision layout ``features.0`` .. ``features.30``); outputs pool2..pool5.

    Outputs ``pool2 [B,128,H/4,W/4]``, ``pool3 [B,256,H/8,W/8]``, ``pool4 [B,512,H/16,W/16]``,
    ``pool5 [B,512,H/32,W/32]``; FCN-8s uses the last three, other heads may use all four.

    Args:
        fcn_reference: the reference FCN-8s geometry (``other_methods.md`` §1.6): conv1_1 padding 100 and
            ceil-mode max-pools. The maps are then larger than ``H/s`` and offset, and only the FCN-8s head in
            its ``reference`` geometry (which crops with offsets 5/9/31) turns them into aligned logits.
    """

    weights_format = "imagenet"

    def __init__(self, fcn_reference: bool = False) -> None:
        super().__init__([128, 256, 512, 512], [4, 8, 16, 32])
        self.name = "vgg16"
        self.weights_hint = f"vgg16-397923af.pth (torchvision ImageNet weights, {_TV_URL}/vgg16-397923af.pth)"
        self.geometry = "fcn_reference" if fcn_reference else "aligned"
        # timm's VGG always builds its 102 M-parameter fc6/fc7 ConvMlp; building on the meta device and
        # materialising only the conv layers avoids seconds of useless random initialisation.
        full = timm.create_model("vgg16", pretrained=False, num_classes=0, device="meta")
        self.features: nn.Sequential = full.features.to_empty(device="cpu")
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):  # timm's VGG init (the meta build skipped it)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if fcn_reference:
            self.features[0].padding = (100, 100)
            for i in _VGG16_POOLS:
                self.features[i].ceil_mode = True

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _VGG16_POOLS[1:]:
                feats.append(x)
        return feats


@BACKBONES.register("vgg16")
def vgg16(fcn_reference: bool = False) -> VGG16Backbone:
    """VGG-16 conv layers (≈ 14.7 M parameters)."""
    return VGG16Backbone(fcn_reference=fcn_reference)


# ------------------------------------------------------------------------------------------------ ConvNeXt


class ConvNeXtBackbone(Backbone):
    """timm ConvNeXt stages 0-3 (``features_only``) at strides 4/8/16/32, each followed by a channels-first
    LayerNorm, as the ConvNeXt backbones of the reference's UperNet (Hugging Face / mmseg) have.

    Pretrained weights: timm's ImageNet file of the same size (``stem.0.*``, ``stages.N.*``, ``head.*`` is
    dropped); the output norms are not in it and start with unit weight and zero bias.
    """

    weights_format = "imagenet"

    def __init__(self, variant: str) -> None:
        model = timm.create_model(f"convnext_{variant}", pretrained=False, features_only=True)
        super().__init__(model.feature_info.channels(), model.feature_info.reduction(), input_multiple=32)
        self.name = f"convnext_{variant}"
        self.weights_hint = (
            f"timm's ImageNet weights of convnext_{variant} (e.g. model.safetensors of the Hugging Face repo "
            f"timm/convnext_{variant}.fb_in1k, saved as base_checkpoints/convnext_{variant}.safetensors)"
        )
        self.body = model
        self.norms = nn.ModuleList(LayerNorm2d(c) for c in self.channels)

    def _family(self) -> str:
        return "ConvNeXt"

    def weights_module(self) -> nn.Module:
        """The timm feature net (keys ``stem_0.*``, ``stages_0.*`` .. ``stages_3.*``)."""
        return self.body

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """timm classifier-model keys (``stem.0.``, ``stages.1.``) -> feature-net keys (``stem_0.``, ``stages_1.``)."""
        return {re.sub(r"^(stem|stages)\.(\d+)\.", r"\1_\2.", k): v for k, v in state.items()}

    def forward(self, x: Tensor) -> list[Tensor]:
        self.check_input_size(x.shape[-2], x.shape[-1])
        return [norm(f) for norm, f in zip(self.norms, self.body(x), strict=True)]


@BACKBONES.register("convnext_tiny")
def convnext_tiny() -> ConvNeXtBackbone:
    """timm ConvNeXt-T (≈ 27.8 M parameters)."""
    return ConvNeXtBackbone("tiny")


@BACKBONES.register("convnext_small")
def convnext_small() -> ConvNeXtBackbone:
    """timm ConvNeXt-S (≈ 49.5 M parameters): the backbone of the reference's upernet-convnext-small."""
    return ConvNeXtBackbone("small")


@BACKBONES.register("convnext_base")
def convnext_base() -> ConvNeXtBackbone:
    """timm ConvNeXt-B (≈ 87.6 M parameters)."""
    return ConvNeXtBackbone("base")


def build_backbone(name: str, **kwargs: object) -> Backbone:
    """Build a registered backbone by name (unknown names raise :class:`ConfigError` with a suggestion)."""

    bb = BACKBONES.build(name, **kwargs)
    assert isinstance(bb, Backbone)
    return bb


__all__ = [
    "Backbone",
    "ConvNeXtBackbone",
    "FeatureInfo",
    "HieraBackbone",
    "ResNetBackbone",
    "VGG16Backbone",
    "build_backbone",
]
