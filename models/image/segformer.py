"""SegFormer (MiT encoder + all-MLP decoder) through Hugging Face ``transformers``, an optional extra.

``model_cfg.model_architecture: segformer`` with ``checkpoint_model: nvidia/mit-b2`` (or another id of
:data:`SEGFORMER_ARCHS`) builds ``SegformerForSemanticSegmentation`` with a new classifier for K classes and wraps
it as a :class:`~models.image.segmentor.Segmentor`: ``encode`` returns the four MiT stage outputs (strides
4/8/16/32), ``decode`` the decoder's stride-4 logits, which ``forward`` resizes with ``model_cfg.upsampling``
(``ssp.md`` §2.4).

Nothing is downloaded. Pretrained weights come from a local folder written by ``save_pretrained`` (or a
by-hand download of the Hugging Face repo) named by ``model_cfg.pretrained_backbone``; without one (or when a
tcseg checkpoint is loaded right after) the architecture of the id is built with random weights. Install the
extra with ``pip install -r requirements-extra.txt``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from config.errors import CheckpointError, ConfigError
from models.image.backbones import Backbone
from models.image.segmentor import Segmentor

# What differs between the MiT sizes; heads (1, 2, 5, 8), reduction ratios (8, 4, 2, 1), patch sizes and MLP
# ratios are SegformerConfig's defaults for all of them. The cityscapes models are MiT-B2/B3 with a trained head.
_MIT = {
    "b0": {"depths": [2, 2, 2, 2], "hidden_sizes": [32, 64, 160, 256], "decoder_hidden_size": 256},
    "b1": {"depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 256},
    "b2": {"depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
    "b3": {"depths": [3, 4, 18, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
    "b4": {"depths": [3, 8, 27, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
    "b5": {"depths": [3, 6, 40, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
}
SEGFORMER_ARCHS: dict[str, dict[str, Any]] = {
    **{f"nvidia/mit-{size}": arch for size, arch in _MIT.items()},
    "nvidia/segformer-b2-finetuned-cityscapes-1024-1024": _MIT["b2"],
    "nvidia/segformer-b3-finetuned-cityscapes-1024-1024": _MIT["b3"],
}


def import_transformers() -> ModuleType:
    """The ``transformers`` package, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "model_cfg.model_architecture: segformer needs the optional Hugging Face transformers package: "
            "pip install transformers (or pip install -r requirements-extra.txt)"
        ) from None
    return transformers


class MiTEncoder(Backbone):
    """The MiT encoder of a ``SegformerForSemanticSegmentation``: ``x [B,3,H,W] -> 4 maps [B,C_i,H/s_i,W/s_i]``
    with ``s = 4, 8, 16, 32`` (overlapping patch embeddings: any input size)."""

    def __init__(self, encoder: nn.Module, hidden_sizes: list[int], name: str) -> None:
        super().__init__(hidden_sizes, [4, 8, 16, 32])
        self.name = name
        self.encoder = encoder

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.encoder(x, output_hidden_states=True, return_dict=True).hidden_states)


class SegformerHead(nn.Module):
    """SegFormer's all-MLP decoder split into the head interface: ``last_feature`` (per-level linear projection to
    D channels, resize to stride 4, concat in reverse level order, 1x1 fuse + BN + ReLU) -> ``g [B,D,H/4,W/4]``;
    ``classify`` (dropout + 1x1 classifier) -> logits ``[B,K,H/4,W/4]``. Same computation as the HF module."""

    output_stride = 4
    feature_stride = 4
    crop_output = False

    def __init__(self, decode_head: nn.Module, width: int) -> None:
        super().__init__()
        self.decode_head = decode_head
        self.feature_channels = int(width)

    def last_feature(self, feats: list[Tensor]) -> Tensor:
        dh = self.decode_head
        # transformers 5 renamed linear_c to linear_projections
        projections = dh.linear_projections if hasattr(dh, "linear_projections") else dh.linear_c
        size = feats[0].shape[-2:]
        levels = []
        for f, proj in zip(feats, projections, strict=True):
            b, _, h, w = f.shape
            y = proj(f).transpose(1, 2).reshape(b, -1, h, w)  # the MLP flattens [B,C,h,w] to [B,hw,D]
            levels.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return dh.activation(dh.batch_norm(dh.linear_fuse(torch.cat(levels[::-1], dim=1))))

    def classify(self, g: Tensor) -> Tensor:
        return self.decode_head.classifier(self.decode_head.dropout(g))

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.classify(self.last_feature(feats))


def _check_folder(folder: Path, model_id: str) -> None:
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"SegFormer folder '{folder}' not found (or has no config.json): download {model_id} by hand (e.g. "
            f"huggingface-cli download {model_id} --local-dir {folder}); tcseg never downloads weights"
        )


def segformer_from_folder(
    folder: str | Path, num_classes: int, *, upsampling: str = "bicubic", expect: str | None = None
) -> Segmentor:
    """A SegFormer segmentor with the weights of a local ``save_pretrained`` folder and a new K-class classifier.

    The folder may hold a SegFormer for image classification (``nvidia/mit-*``: encoder only, the decoder starts
    random) or for segmentation (its classifier is replaced when K differs). ``expect`` (an id of
    :data:`SEGFORMER_ARCHS`) checks that the folder holds that architecture, so a run named after it is it.
    """
    tf = import_transformers()
    path = Path(folder)
    _check_folder(path, expect or "the SegFormer model")
    config = tf.SegformerConfig.from_pretrained(str(path), local_files_only=True)
    overrides: dict[str, Any] = {}
    if expect is not None:
        arch = SEGFORMER_ARCHS[expect]
        found = {k: list(getattr(config, k)) for k in ("depths", "hidden_sizes")}
        if found != {k: arch[k] for k in found}:
            raise CheckpointError(
                f"SegFormer folder '{path}' holds depths {found['depths']}, widths {found['hidden_sizes']}, not "
                f"{expect} (depths {arch['depths']}, widths {arch['hidden_sizes']}); fix model_cfg.checkpoint_model "
                "or the folder"
            )
        # a classification checkpoint carries no decoder: build the decoder width the id stands for
        overrides["decoder_hidden_size"] = arch["decoder_hidden_size"]
    model = tf.SegformerForSemanticSegmentation.from_pretrained(
        str(path), num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=True, **overrides
    )
    return _wrap(model, upsampling, expect or path.name)


def build_segformer(
    model_id: str, num_classes: int, *, folder: str | Path | None = None, upsampling: str = "bicubic"
) -> Segmentor:
    """SegFormer ``model_id`` for K classes: weights from ``folder`` (checked to hold that architecture), or
    random weights when ``folder`` is None."""
    if model_id not in SEGFORMER_ARCHS:
        raise ConfigError(
            f"model_cfg.checkpoint_model: '{model_id}' is not a SegFormer id; use one of {', '.join(SEGFORMER_ARCHS)}"
        )
    if folder is not None:
        return segformer_from_folder(folder, num_classes, upsampling=upsampling, expect=model_id)
    tf = import_transformers()
    config = tf.SegformerConfig(**SEGFORMER_ARCHS[model_id], num_labels=num_classes)
    return _wrap(tf.SegformerForSemanticSegmentation(config), upsampling, model_id)


def _wrap(model: nn.Module, upsampling: str, name: str) -> Segmentor:
    config = model.config
    encoder = MiTEncoder(model.segformer, list(config.hidden_sizes), name)
    head = SegformerHead(model.decode_head, config.decoder_hidden_size)
    return Segmentor(encoder, head, int(config.num_labels), upsampling=upsampling)


__all__ = [
    "SEGFORMER_ARCHS",
    "MiTEncoder",
    "SegformerHead",
    "build_segformer",
    "import_transformers",
    "segformer_from_folder",
]
