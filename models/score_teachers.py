"""Teachers that score every class at every pixel, for pseudo-labelling across label spaces (``other_methods.md``
§2.3): ``predict_scores(images) -> [B, N(+1), H, W]`` and ``constrain(scores, candidates)``.

- :class:`SegmentorTeacher`: any network that returns logits ``[B,N,h,w]`` (every tcseg image run, SegFormer
  included): the softmax, resized to the input.
- :class:`Mask2FormerTeacher`: a Hugging Face ``transformers`` Mask2Former (optional extra) read from a local
  folder: ``S_k(x) = sum_q softmax(class_q)_k * sigmoid(mask_q(x))`` over the ``N`` classes *and* the no-object
  channel, kept as channel ``N`` (void).

:func:`tta_scores` averages the scores over flips and scales (each resized back to the input); a scale that runs
out of memory is skipped and reported, as the reference does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.errors import CheckpointError
from data.ontology import constrain


class ScoreTeacher:
    """Scores of ``num_classes`` classes (plus a void channel last when ``has_void``) for ImageNet-normalised RGB
    ``images`` [B,3,H,W], at the input size."""

    num_classes: int = 0
    has_void: bool = False

    def predict_scores(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def constrain(self, scores: Tensor, candidates: Tensor | None) -> Tensor:
        """Labels [B,H,W] in the master taxonomy, void = 255 (:func:`data.ontology.constrain`)."""
        return constrain(scores, candidates, self.num_classes)


class SegmentorTeacher(ScoreTeacher):
    """A network returning logits [B,N,h,w] (a tcseg image model), in eval mode, without gradients."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        self.model, self.num_classes = model.eval(), num_classes

    @torch.no_grad()
    def predict_scores(self, images: Tensor) -> Tensor:
        logits = self.model(images).float()
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(1)


class Mask2FormerTeacher(ScoreTeacher):
    """A ``transformers`` ``Mask2FormerForUniversalSegmentation`` (its ``config.num_labels`` = N classes)."""

    has_void = True

    def __init__(self, model: nn.Module) -> None:
        self.model, self.num_classes = model.eval(), int(model.config.num_labels)

    @classmethod
    def from_folder(cls, folder: str | Path, device: torch.device | str = "cpu") -> Mask2FormerTeacher:
        """Load ``save_pretrained`` output from a local folder (nothing is downloaded)."""
        from models.image.segformer import import_transformers

        path = Path(folder)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: no Mask2Former folder (config.json missing); pass the local folder that "
                                  "save_pretrained wrote")  # fmt: skip
        tf = import_transformers()
        model = tf.Mask2FormerForUniversalSegmentation.from_pretrained(str(path), local_files_only=True)
        return cls(model.to(device))

    @torch.no_grad()
    def predict_scores(self, images: Tensor) -> Tensor:
        out = self.model(pixel_values=images)
        probs = out.class_queries_logits.float().softmax(-1)  # [B,Q,N+1], the last = no object
        masks = F.interpolate(out.masks_queries_logits.float(), size=images.shape[-2:], mode="bilinear",
                              align_corners=False).sigmoid()  # fmt: skip
        return torch.einsum("bqk,bqhw->bkhw", probs, masks)


class _HFLogits(nn.Module):
    """A ``transformers`` semantic model (SegFormer) as a plain ``images -> logits [B,N,h,w]`` network."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(pixel_values=images).logits


def hf_teacher_from_folder(
    folder: str | Path, device: torch.device | str = "cpu"
) -> tuple[ScoreTeacher, list[str]]:
    """A teacher from a local ``transformers`` folder (Mask2Former or SegFormer, by its ``config.json``
    ``model_type``) and its class names (``id2label``, the master taxonomy). Nothing is downloaded."""
    path = Path(folder)
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{path}: not a transformers model folder (config.json missing); pass the local "
                              "folder that save_pretrained wrote")  # fmt: skip
    kind = json.loads(config.read_text()).get("model_type")
    if kind == "mask2former":
        teacher: ScoreTeacher = Mask2FormerTeacher.from_folder(path, device)
        id2label = teacher.model.config.id2label
    elif kind == "segformer":
        from models.image.segformer import import_transformers

        tf = import_transformers()
        model = tf.SegformerForSemanticSegmentation.from_pretrained(str(path), local_files_only=True)
        teacher = SegmentorTeacher(_HFLogits(model).to(device), int(model.config.num_labels))
        id2label = model.config.id2label
    else:
        raise CheckpointError(f"{config}: model_type '{kind}' is not a supported teacher; use a Mask2Former or "
                              "SegFormer semantic segmentation folder, or a tcseg run (teacher.run)")  # fmt: skip
    names = [str(id2label.get(i, id2label.get(str(i), f"class_{i}"))) for i in range(teacher.num_classes)]
    return teacher, names


def tta_scores(
    teacher: ScoreTeacher, images: Tensor, flip: bool = False, scales: Sequence[float] = (1.0,)
) -> tuple[Tensor, list[float]]:
    """The mean of ``teacher``'s scores [B,C,H,W] over ``scales`` x (identity, horizontal flip when ``flip``),
    each resized back to the input size, and the scales skipped because they ran out of GPU memory."""
    h, w = images.shape[-2:]
    total, count, skipped = None, 0, []
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = (
            images
            if size == (h, w)
            else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        )
        try:  # a scale counts whole (both flips) or not at all
            views = []
            for flipped in (False, True) if flip else (False,):
                y = teacher.predict_scores(x.flip(-1) if flipped else x)
                y = y.flip(-1) if flipped else y
                views.append(y if y.shape[-2:] == (h, w) else F.interpolate(y, size=(h, w), mode="bilinear",
                                                                            align_corners=False))  # fmt: skip
        except torch.OutOfMemoryError:
            skipped.append(s)
            torch.cuda.empty_cache()
            continue
        for y in views:
            total = y if total is None else total + y
            count += 1
    if total is None:
        raise CheckpointError(
            f"every TTA scale ({', '.join(map(str, scales))}) ran out of GPU memory; use smaller ones"
        )
    return total / count, skipped
