"""Score teachers for pseudo-labelling across label spaces: a tcseg network, a tiny randomly initialised
Mask2Former built from a config (no download), flip / multi-scale TTA and the out-of-memory skip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from config.errors import CheckpointError
from models.score_teachers import (
    Mask2FormerTeacher,
    ScoreTeacher,
    SegmentorTeacher,
    hf_teacher_from_folder,
    tta_scores,
)


class Ramp(nn.Module):
    """Logits [B,2,H/2,W/2]: class 1 grows to the right, so a flip shows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ramp = torch.linspace(-1, 1, w // 2).expand(b, 1, h // 2, w // 2)
        return torch.cat([torch.zeros_like(ramp), 4 * ramp], 1)


def test_a_segmentor_scores_probabilities_at_the_input_size() -> None:
    teacher = SegmentorTeacher(Ramp(), 2)
    s = teacher.predict_scores(torch.zeros(1, 3, 8, 12))
    assert s.shape == (1, 2, 8, 12) and torch.allclose(s.sum(1), torch.ones(1, 8, 12))
    assert teacher.constrain(s, None)[0, 0].tolist() == [0] * 6 + [1] * 6
    mean, skipped = tta_scores(teacher, torch.zeros(1, 3, 8, 12), flip=True, scales=(1.0, 0.5))
    assert skipped == [] and torch.allclose(
        mean[:, 1], mean[:, 1].flip(-1), atol=1e-6
    )  # symmetric after flips


def test_a_scale_that_runs_out_of_memory_is_skipped_and_reported() -> None:
    class Picky(ScoreTeacher):
        num_classes = 2

        def predict_scores(self, images: torch.Tensor) -> torch.Tensor:
            if images.shape[-1] > 12:
                raise torch.OutOfMemoryError("too big")
            return torch.full((images.shape[0], 2, *images.shape[-2:]), 0.5)

    mean, skipped = tta_scores(Picky(), torch.zeros(1, 3, 8, 12), flip=True, scales=(1.0, 2.0))
    assert skipped == [2.0] and mean.shape == (1, 2, 8, 12)
    with pytest.raises(CheckpointError, match="every TTA scale"):
        tta_scores(Picky(), torch.zeros(1, 3, 8, 12), scales=(2.0,))


def test_a_tiny_mask2former_from_a_local_folder(tmp_path: Path) -> None:
    tf = pytest.importorskip("transformers")
    swin = tf.SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                         window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])  # fmt: skip
    cfg = tf.Mask2FormerConfig(backbone_config=swin, hidden_dim=32, num_queries=4, feature_size=32,
                               mask_feature_size=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                               dim_feedforward=32, encoder_feedforward_dim=32, num_labels=3)  # fmt: skip
    torch.manual_seed(0)
    tf.Mask2FormerForUniversalSegmentation(cfg).save_pretrained(tmp_path / "m2f")
    teacher = Mask2FormerTeacher.from_folder(tmp_path / "m2f")
    assert teacher.num_classes == 3 and teacher.has_void
    scores = teacher.predict_scores(torch.randn(2, 3, 64, 96))
    assert scores.shape == (2, 4, 64, 96) and (scores >= 0).all()  # 3 classes + the no-object channel
    labels = teacher.constrain(scores, torch.ones(4, 64, 96, dtype=torch.bool))
    void = scores.argmax(1) == 3
    assert labels[void].eq(255).all() and labels[~void].lt(3).all()
    with pytest.raises(CheckpointError, match="config.json missing"):
        Mask2FormerTeacher.from_folder(tmp_path / "nothing")


def test_a_tiny_segformer_from_a_local_folder_names_its_classes(tmp_path: Path) -> None:
    tf = pytest.importorskip("transformers")
    cfg = tf.SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             num_attention_heads=[1, 1], decoder_hidden_size=16, num_labels=3,
                             id2label={0: "road", 1: "tree", 2: "car"}, label2id={"road": 0, "tree": 1, "car": 2})  # fmt: skip
    torch.manual_seed(0)
    tf.SegformerForSemanticSegmentation(cfg).save_pretrained(tmp_path / "segformer")
    teacher, names = hf_teacher_from_folder(tmp_path / "segformer")
    assert names == ["road", "tree", "car"] and teacher.num_classes == 3 and not teacher.has_void
    scores = teacher.predict_scores(torch.randn(1, 3, 32, 48))
    assert scores.shape == (1, 3, 32, 48) and torch.allclose(scores.sum(1), torch.ones(1, 32, 48), atol=1e-5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="model_type 'bert' is not a supported teacher"):
        hf_teacher_from_folder(tmp_path / "other")
