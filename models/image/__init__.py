"""Image models: backbones, heads and the segmentor that joins them.

Importing this package registers every backbone (``BACKBONES``) and head (``HEADS``).
"""

from models.image import backbones, heads, pretrained, tiny_cnn
from models.image.backbones import Backbone, FeatureInfo, build_backbone
from models.image.pretrained import load_backbone_weights
from models.image.segmentor import Segmentor, build_segmentor, default_head_width

__all__ = [
    "Backbone",
    "FeatureInfo",
    "Segmentor",
    "backbones",
    "build_backbone",
    "build_segmentor",
    "default_head_width",
    "heads",
    "load_backbone_weights",
    "pretrained",
    "tiny_cnn",
]
