"""``--resolution label``: mIoU at each mask's own size (metrics.md §1), TC and VC stay at the input size."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import torch

from data.catalog import SYNTHETIC
from data.frames import read_split
from data.image_dataset import FrameStream, collate_stream
from eval.vis import image as eval_image
from eval.vis.stream import FrameScorer


def test_scorer_resizes_logits_to_the_label(tiny_synthetic: Path) -> None:
    clips = read_split(tiny_synthetic, "val", SYNTHETIC)
    k = SYNTHETIC.num_classes
    logits = torch.zeros(k, 4, 4)
    logits[1, :, :2] = 5.0  # left half class 1, right half class 0
    # bilinear x2 (align_corners=False): output column x samples source column (x + 0.5) / 2 - 0.5, so columns
    # 0-4 see a positive class-1 logit (column 4: 0.25 * 5) and columns 5-7 see 0 (class 0 wins the tie)
    label = torch.zeros(8, 8, dtype=torch.long)
    label[:, :5] = 1
    scorer = FrameScorer(SYNTHETIC, clips, torch.device("cpu"), None, [])
    scorer.add(0, 0, torch.zeros(4, 4, 3, dtype=torch.uint8), logits.argmax(0), label, logits)
    assert scorer.cm.mat.sum() == 64 and scorer.cm.miou() == 1.0
    assert scorer.metrics((4, 4), "per frame (image)", {}, "label")["miou"]["resolution"].startswith("label")


def test_stream_serves_native_masks(tiny_synthetic: Path, tmp_path: Path) -> None:
    root = tmp_path / "big_masks"
    shutil.copytree(tiny_synthetic, root)
    for mask in root.glob("data/*/mask/*.png"):
        m = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(
            str(mask), cv2.resize(m, (m.shape[1] * 2, m.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
        )
    clips = read_split(root, "val", SYNTHETIC)
    native = FrameStream(clips, SYNTHETIC, (64, 96), native_labels=True)
    item = native[0]
    assert item["labelled"] and tuple(item["label"].shape) == (128, 192)
    assert tuple(FrameStream(clips, SYNTHETIC, (64, 96))[0]["label"].shape) == (64, 96)
    mixed = collate_stream([item, {**item, "label": torch.zeros(3, 3, dtype=torch.long)}])
    assert isinstance(mixed["label"], list) and mixed["image"].shape[0] == 2


def test_label_resolution_equals_input_when_sizes_match(tiny_image_run: Path) -> None:
    common = [
        str(tiny_image_run),
        "--num-workers",
        "0",
        "--no-write-res",
        "--tc-protocol",
        "none",
        "--vc",
        "none",
    ]
    at_input = eval_image.main(common)
    at_label = eval_image.main([*common, "--resolution", "label"])
    assert at_input is not None and at_label is not None
    assert at_label["miou"]["value"] == at_input["miou"]["value"]
    assert at_label["miou"]["resolution"].startswith("label") and at_input["miou"]["resolution"] == [64, 96]
