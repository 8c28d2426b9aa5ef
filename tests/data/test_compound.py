"""Compound training (label-space KD): pseudo-label folders, the weighted epoch order, and train_image end to end."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from config.errors import ConfigError, DataError
from config.loader import load
from data.catalog import SYNTHETIC
from data.compound import (
    FORMAT,
    MANIFEST,
    CompoundFrames,
    epoch_permutation,
    largest_remainder,
    read_pseudo_labels,
)
from data.image_dataset import LabelledFrames
from tests.conftest import TINY_HW
from training import train_image

# (clip, stem) of the tiny synthetic set: two clips, unlabelled frames and the labelled last frame (000003)
ENTRIES = [("0000_vid00_00", "000000"), ("0000_vid00_00", "000003"), ("0002_vid01_00", "000001"),
           ("0002_vid01_00", "000003")]  # fmt: skip


def pattern(k: int) -> np.ndarray:
    """A pseudo-label (master training ids 0..7) with a void (255) block; different for each k."""
    h, w = TINY_HW
    ids = ((np.arange(h * w).reshape(h, w) // 7 + k) % 8).astype(np.uint8)
    ids[:8, :8] = 255
    return ids


def write_labels(labels_dir: Path, root: Path, entries=ENTRIES, **manifest_changes) -> dict:
    """A pseudo-label folder over the prepared dataset ``root`` as the pseudo-labelling CLI writes it."""
    for k, (clip, stem) in enumerate(entries):
        (labels_dir / "data" / clip / "mask").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(labels_dir / "data" / clip / "mask" / f"{stem}.png"), pattern(k))
    manifest = {"format": FORMAT, "dataset_root": str(root), "use_priors": True,
                "master": {"taxonomy": "synthetic", "classes": list(SYNTHETIC.class_names), "void": 255},
                "files": {"train": [f"{c}/{s}" for c, s in entries]}, **manifest_changes}  # fmt: skip
    (labels_dir / MANIFEST).write_text(json.dumps(manifest))
    return manifest


# ----------------------------------------------------------------------------------------- label encoding


def test_train_ids_encoding_passes_ids_and_void_through() -> None:
    info = dataclasses.replace(SYNTHETIC, label_encoding="train_ids")
    ids = np.array([[0, 7], [255, 3]], np.uint8)
    assert info.mask_to_train_ids(ids).tolist() == ids.tolist()
    assert SYNTHETIC.mask_to_train_ids(ids[:1]).tolist() == [[255, 6]]  # raw stays id + 1, 0 = ignore
    with pytest.raises(DataError, match=r"m\.png: label values \[8, 9\].*re-run the pseudo-labelling"):
        info.mask_to_train_ids(np.array([[9, 8], [255, 0]], np.uint8), "m.png")


# ------------------------------------------------------------------------------------------ read_pseudo_labels


def test_read_pseudo_labels_round_trips_and_never_reads_the_extra_masks(
    tiny_synthetic: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "teacher_labels"
    manifest = write_labels(labels, tiny_synthetic)
    clips, info, got = read_pseudo_labels(labels, SYNTHETIC)
    assert got == manifest
    assert info.name == "synthetic+pseudo:teacher_labels" and info.label_encoding == "train_ids"
    assert info.class_names == SYNTHETIC.class_names and SYNTHETIC.label_encoding == "raw"
    assert [c.name for c in clips] == ["0000_vid00_00", "0002_vid01_00"]
    assert clips[0].frames[0] == tiny_synthetic / "data" / "0000_vid00_00" / "origin" / "000000.png"
    assert clips[0].labelled == [0, 3] and clips[1].labelled == [1, 3]
    assert clips[0].masks[3] == labels / "data" / "0000_vid00_00" / "mask" / "000003.png"
    data = LabelledFrames(clips, info, TINY_HW, train=False)
    assert len(data) == 4
    for k in range(4):
        label = data[k]["label"].numpy()
        assert (label == pattern(k)).all() and label[0, 0] == 255


def _no_folder(labels: Path, root: Path) -> Path:
    return labels


def _no_manifest(labels: Path, root: Path) -> Path:
    write_labels(labels, root)
    (labels / MANIFEST).unlink()
    return labels / MANIFEST


def _bad_format(labels: Path, root: Path) -> Path:
    write_labels(labels, root, format="someone-else/2")
    return labels / MANIFEST


def _not_json(labels: Path, root: Path) -> Path:
    write_labels(labels, root)
    (labels / MANIFEST).write_text("{")
    return labels / MANIFEST


def _other_classes(labels: Path, root: Path) -> Path:
    write_labels(labels, root, master={"taxonomy": "cityscapes", "classes": ["road", "car"], "void": 255})
    return labels / MANIFEST


def _missing_mask(labels: Path, root: Path) -> Path:
    write_labels(labels, root)
    gone = labels / "data" / "0002_vid01_00" / "mask" / "000001.png"
    gone.unlink()
    return gone


def _unfinished(labels: Path, root: Path) -> Path:
    write_labels(labels, root, complete=False)
    return labels / MANIFEST


def _no_split(labels: Path, root: Path) -> Path:
    write_labels(labels, root, files={"val": ["0000_vid00_00/000000"]})
    return labels / MANIFEST


@pytest.mark.parametrize(
    "breaks",
    [_no_folder, _no_manifest, _bad_format, _not_json, _other_classes, _missing_mask, _unfinished, _no_split],
)
def test_a_broken_pseudo_label_folder_is_a_data_error_naming_the_file(
    tiny_synthetic: Path, tmp_path: Path, breaks
) -> None:
    named = breaks(tmp_path / "labels", tiny_synthetic)
    with pytest.raises(DataError, match=re.escape(str(named))) as err:
        read_pseudo_labels(tmp_path / "labels", SYNTHETIC)
    assert "\n" not in str(err.value) and "python -m eval.pseudo_label" in str(err.value)


def test_a_value_outside_the_master_ids_is_a_data_error_naming_the_mask(
    tiny_synthetic: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels"
    write_labels(labels, tiny_synthetic)
    bad = labels / "data" / "0000_vid00_00" / "mask" / "000003.png"
    ids = pattern(1)
    ids[20, 20] = 9
    cv2.imwrite(str(bad), ids)
    clips, info, _ = read_pseudo_labels(labels, SYNTHETIC)
    data = LabelledFrames(clips, info, TINY_HW, train=False)
    data[0]  # fine
    with pytest.raises(DataError, match=re.escape(str(bad)) + r": label values \[9\].*pseudo-labelling"):
        data[1]


# --------------------------------------------------------------------------------------- the weighted order


class Ints(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int) -> dict:
        return {"i": idx, "epoch": self.epoch}


def _per_dataset(data: CompoundFrames, order: list[int]) -> Counter:
    return Counter(data[i]["dataset"] for i in order)


def test_weights_set_exact_shares_of_an_epoch() -> None:
    data = CompoundFrames([Ints(40), Ints(40)], weights=[3, 1])
    order = data.epoch_order(seed=0, epoch=0)
    assert len(order) == len(data) == 80
    assert _per_dataset(data, order) == {0: 60, 1: 20}
    assert [d["share"] for d in data.describe()] == [0.75, 0.25]
    first, second = Counter(i for i in order if i < 40), Counter(i for i in order if i >= 40)
    assert len(first) == 40 and sorted(first.values()) == [1] * 20 + [2] * 20  # 60 of 40: one pass and a half
    assert len(second) == 20 and set(second.values()) == {1}  # 20 of 40: without replacement


def test_weight_zero_excludes_a_dataset() -> None:
    data = CompoundFrames([Ints(10), Ints(30)], weights=[0, 2])
    for epoch in range(3):
        order = data.epoch_order(seed=1, epoch=epoch)
        assert len(order) == 40 and all(i >= 10 for i in order)
    assert [d["share"] for d in data.describe()] == [0.0, 1.0]


def test_order_is_deterministic_by_seed_and_epoch() -> None:
    a = CompoundFrames([Ints(40), Ints(40)], weights=[3, 1])
    b = CompoundFrames([Ints(40), Ints(40)], weights=[3, 1])
    assert a.epoch_order(0, 2) == b.epoch_order(0, 2)
    assert a.epoch_order(0, 2) != a.epoch_order(0, 3)
    assert a.epoch_order(0, 2) != a.epoch_order(1, 2)


def test_unweighted_order_is_the_plain_permutation() -> None:
    data = CompoundFrames([Ints(13), Ints(10)])
    assert data.epoch_order(3, 5) == epoch_permutation(23, 3, 5)
    g = torch.Generator().manual_seed(3 * 100_003 + 5)  # what training.loop.epoch_indices always drew
    assert data.epoch_order(3, 5) == torch.randperm(23, generator=g).tolist()
    assert data.counts() == [13, 10]


def test_largest_remainder_rounding_sums_to_the_total() -> None:
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]
    assert largest_remainder(7, [1, 0, 1]) == [4, 0, 3]
    assert largest_remainder(80, [0.1, 0.2, 0.7]) == [8, 16, 56]


def test_items_carry_their_dataset_and_the_epoch_reaches_every_part() -> None:
    parts = [Ints(2), Ints(3)]
    data = CompoundFrames(parts, weights=[1, 1])
    data.epoch = 4
    assert [p.epoch for p in parts] == [4, 4] and data.epoch == 4
    assert data[1] == {"i": 1, "epoch": 4, "dataset": 0} and data[2] == {"i": 0, "epoch": 4, "dataset": 1}
    with pytest.raises(IndexError):
        data[5]
    with pytest.raises(ValueError, match="no samples"):
        CompoundFrames([Ints(2), Ints(0)], weights=[1, 1])


# --------------------------------------------------------------------------------------- config and training


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("[1,1,1]", r"data_cfg\.dataset_weights: 3 weights for 2 training datasets"),
        ("[1]", r"data_cfg\.dataset_weights: 1 weights for 2 training datasets"),
        ("[0,0]", r"data_cfg\.dataset_weights: .*at least one > 0"),
        ("[-1,2]", r"data_cfg\.dataset_weights\[0\]: must be at least 0"),
    ],
)
def test_bad_dataset_weights_are_config_errors(weights: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(
            "base_synthetic",
            "image",
            ["data_cfg.pseudo_labels=[some/labels]", f"data_cfg.dataset_weights={weights}"],
        )


KD = ["loss_cfg.loss_func=kldiv", "data_cfg.logit_distillation=true", "data_cfg.soft_labels=true",
      "loss_cfg.softmax_on_target=true"]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["data_cfg.labeled_fraction=0.5"], r"data_cfg\.labeled_fraction"),
        (["data_cfg.held_out_fraction=0.25"], r"data_cfg\.held_out_fraction"),
        (["semi_cfg.step_mode=joint"], "semi_cfg"),
        (KD, "a KD teacher"),
    ],
)
def test_pseudo_labels_refuse_what_they_cannot_be_combined_with(
    tiny_overrides: list[str], tmp_path: Path, extra: list[str], named: str
) -> None:
    with pytest.raises(ConfigError, match=r"data_cfg\.pseudo_labels: .*" + named):
        train_image.main(["base_synthetic", *tiny_overrides, f"data_cfg.pseudo_labels=[{tmp_path}]", *extra])
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()]  # no run folder left


def test_train_image_on_the_source_and_pseudo_labels(
    tiny_synthetic: Path, tiny_overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    labels = tmp_path / "labels"
    write_labels(labels, tiny_synthetic)
    run = train_image.main(["base_synthetic", *tiny_overrides, f"data_cfg.pseudo_labels=[{labels}]",
                            "data_cfg.dataset_weights=[1,1]", "training_cfg.selection_metric=fitness",
                            "training_cfg.num_epochs=1"])  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection_metric"] == "fitness"
    assert metrics["datasets"] == [
        {"name": "synthetic", "samples": 4, "weight": 1.0, "share": 0.5},
        {"name": "synthetic+pseudo:labels", "samples": 4, "weight": 1.0, "share": 0.5},
    ]
    val = metrics["epochs"][-1]["val"]
    assert val["fitness"] is not None and 0.0 <= val["fitness"] <= 1.0
    assert metrics["epochs"][-1]["step"] == 8 // 2  # 8 samples an epoch, batch 2
    best = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    assert best["best_metric"] == pytest.approx(val["fitness"])
    out = capsys.readouterr().out
    assert "synthetic+pseudo:labels: 4 samples, weight 1, 50.0% of each epoch" in out
    assert "val fitness" in (run / "log.txt").read_text()
