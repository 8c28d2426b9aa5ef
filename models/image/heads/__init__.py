"""Segmentation heads, registered in :data:`models.registry.HEADS` when this package is imported.

Every head is built as ``HEADS.build(name, in_channels=..., in_strides=..., num_classes=..., width=..., **kw)``
with the widths and strides of the backbone outputs, and offers:

- ``forward(feats) -> logits`` at ``output_stride`` (``classify(last_feature(feats))``);
- ``last_feature(feats) -> g`` (``feature_channels`` wide, at ``feature_stride``) and ``classify(g) -> logits``,
  so that DFF can warp ``g`` and classify the result;
- ``crop_output``: whether the logits are larger than the input and must be cropped rather than resized.

========  =============  ==============  ====================  ===========
name      output_stride  feature_stride  g                     default width
========  =============  ==============  ====================  ===========
upernet   4              4               fused map, C wide     256 (C)
swiftnet  4              4               ladder output, C      128 (C)
fcn8s     1              8               fused scores, K wide  4096 (fc6/fc7)
========  =============  ==============  ====================  ===========
"""

from models.image.heads.fcn8s import FCN8sHead
from models.image.heads.swiftnet import SwiftNetHead
from models.image.heads.upernet import UperNetHead

__all__ = ["FCN8sHead", "SwiftNetHead", "UperNetHead"]
