"""Confusion-matrix metrics against hand computations and the torchmetrics oracle."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from eval.metrics import ConfusionMatrix


def test_hand_computed_example() -> None:
    # metrics.md 2.2: preds [0,1,0,1] vs target [0,1,0,0], C = 3 -> nan_exclude 0.5833, zero 0.3889
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 0]))
    assert cm.mat.tolist() == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]
    iou = cm.iou()
    assert iou[0] == pytest.approx(2 / 3) and iou[1] == pytest.approx(1 / 2) and math.isnan(iou[2])
    assert cm.miou("nan_exclude") == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert cm.miou("zero") == pytest.approx((2 / 3 + 1 / 2) / 3)
    assert cm.pixel_acc() == pytest.approx(3 / 4)
    assert cm.mean_class_acc() == pytest.approx((2 / 3 + 1) / 2)
    assert cm.fw_iou() == pytest.approx(3 / 4 * 2 / 3 + 1 / 4 * 1 / 2)


def test_ignore_and_extra_mask() -> None:
    cm = ConfusionMatrix(2)
    cm.update(
        torch.tensor([0, 1, 1, 0]),
        torch.tensor([0, 255, 1, 1]),
        valid=torch.tensor([True, True, True, False]),
    )
    assert cm.mat.tolist() == [[1, 0], [0, 1]]


def test_bad_label_values_raise() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target values outside"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="prediction values outside"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchmetrics_macro_jaccard(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    c = 6
    pred = torch.randint(0, c - 1, (4, 32, 32), generator=g)  # class 5 never predicted
    target = torch.randint(0, c - 2, (4, 32, 32), generator=g)  # classes 4, 5 absent from the target
    target[:, :3] = 255
    cm = ConfusionMatrix(c)
    for p, t in zip(pred, target, strict=True):  # streaming over frames == one big update
        cm.update(p, t)
    oracle = MulticlassJaccardIndex(num_classes=c, average="macro", ignore_index=255)
    assert cm.miou() == pytest.approx(float(oracle(pred, target)), abs=1e-6)


def test_summary_is_json_ready() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0]), torch.tensor([0, 0]))
    s = cm.summary(["a", "b"])
    assert s["miou"] == 1.0 and s["per_class"] == {"a": 1.0, "b": None}
    assert s["confusion_matrix"] == [[2, 0], [0, 0]]
    rows = cm.per_class_rows(["a", "b"])
    assert rows[1]["iou"] == "" and rows[0]["gt_pixels"] == 2 and not rows[1]["present_in_gt"]


def test_fitness_is_0_8_miou_zero_plus_0_2_pixel_acc() -> None:
    # metrics.md 2.4 on the 2.2 example: miou_zero (2/3 + 1/2) / 3, pixel accuracy 3/4
    cm = ConfusionMatrix(3)
    cm.mat = torch.tensor([[2, 1, 0], [0, 1, 0], [0, 0, 0]])
    want = 0.8 * (2 / 3 + 1 / 2) / 3 + 0.2 * 3 / 4
    assert cm.fitness() == pytest.approx(want)
    assert cm.summary(["a", "b", "c"])["fitness"] == pytest.approx(want, abs=1e-6)
    assert (
        math.isnan(ConfusionMatrix(2).fitness()) and ConfusionMatrix(2).summary(["a", "b"])["fitness"] is None
    )
