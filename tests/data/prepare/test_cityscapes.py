"""Cityscapes sequences converter on tiny archives in the official layouts (``leftImg8bit_sequence/`` and
``gtFine/`` with train, val and test), with 6-frame snippets labelled on their 4th frame."""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.prepare import cityscapes, cli
from data.prepare.common import BuildContext, PrepareError, Report
from tests.data.prepare.archives import train_one_step

H, W = 64, 96
LABEL_INDEX, SNIPPET_LEN = 3, 6
# (split, city, seq, labelled frame, sequence frames present in the archive)
SNIPPETS = [
    ("train", "aachen", 0, 3, range(0, 6)),
    ("train", "aachen", 1, 3, range(0, 6)),
    ("train", "aachen", 2, 3, range(0, 5)),  # frame 5 missing: skipped and reported
    ("train", "bochum", 0, 10, range(7, 13)),  # one long sequence: two overlapping snippets, 7-12 and 10-15
    ("train", "bochum", 0, 13, range(10, 16)),
    ("val", "frankfurt", 0, 3, range(0, 6)),
    ("test", "berlin", 0, 3, range(0, 6)),  # no public labels: never extracted
]
TRAIN = ["aachen_000000_000003", "aachen_000001_000003", "bochum_000000_000010", "bochum_000000_000013"]


@pytest.fixture(autouse=True)
def tiny_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cityscapes, "LABEL_INDEX", LABEL_INDEX)
    monkeypatch.setattr(cityscapes, "SNIPPET_LEN", SNIPPET_LEN)


def frame_png(city: str, seq: int, frame: int) -> bytes:
    rng = np.random.default_rng(zlib.crc32(f"{city}_{seq}_{frame}".encode()))
    return cv2.imencode(".png", rng.integers(0, 256, (H, W, 3), np.uint8))[1].tobytes()


def label_ids(unknown: bool) -> np.ndarray:
    """Rows of road (7), car (26), unlabeled (0), license plate as uint8 (255); 5 pixels of 40 if asked."""
    ids = np.full((H, W), 7, np.uint8)
    ids[16:32], ids[32:48], ids[48:] = 26, 0, 255
    if unknown:
        ids[0, :5] = 40
    return ids


def make_archives(datasets: Path) -> dict[str, Path]:
    frames: dict[str, bytes] = {}
    gt = zipfile.ZipFile(datasets / "gtFine_trainvaltest.zip", "w")
    gt.writestr("license.txt", "cityscapes license")
    for split, city, seq, label, present in SNIPPETS:
        for k in present:
            frames[f"leftImg8bit_sequence/{split}/{city}/{city}_{seq:06d}_{k:06d}_leftImg8bit.png"] = (
                frame_png(city, seq, k)
            )
        stem = f"gtFine/{split}/{city}/{city}_{seq:06d}_{label:06d}_gtFine"
        ids = label_ids(unknown=(city, seq) == ("aachen", 1))
        gt.writestr(f"{stem}_labelIds.png", cv2.imencode(".png", ids)[1].tobytes())
        gt.writestr(f"{stem}_instanceIds.png", cv2.imencode(".png", ids)[1].tobytes())
        gt.writestr(f"{stem}_color.png", b"not needed")
        gt.writestr(f"{stem}_polygons.json", "{}")
    gt.close()
    with zipfile.ZipFile(datasets / "leftImg8bit_sequence_trainvaltest.zip", "w") as seq_zip:
        seq_zip.writestr("license.txt", "cityscapes license")
        for name, data in frames.items():
            seq_zip.writestr(name, data)
    return {"leftimg8bit_sequence": datasets / "leftImg8bit_sequence_trainvaltest.zip",
            "gtfine": datasets / "gtFine_trainvaltest.zip"}  # fmt: skip


@pytest.fixture
def archives(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "datasets").mkdir()
    return make_archives(tmp_path / "datasets")


def context(tmp_path: Path, archives: dict[str, Path], resize_wh=None, jobs: int = 1) -> BuildContext:
    stage = tmp_path / "stage"
    return BuildContext(archives=archives, work=stage / "work", out=stage / "out", resize_wh=resize_wh,
                        jobs=jobs, progress=False, report=Report())  # fmt: skip


def test_snippets_labels_and_splits(tmp_path: Path, archives: dict[str, Path]) -> None:
    ctx = context(tmp_path, archives, jobs=2)
    entries = cityscapes.CONVERTER.build(ctx)
    out = ctx.out
    assert (out / "train.txt").read_text().split() == TRAIN
    assert (out / "val.txt").read_text().split() == ["frankfurt_000000_000003"]
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted([*TRAIN, "frankfurt_000000_000003"])
    assert (entries["train_clips"], entries["val_clips"], entries["skipped_snippets"]) == (4, 1, 1)
    # each clip: its 6 frames in time order, the label on the 4th; the frames are the archive's bytes
    for clip, (city, seq, first) in {"aachen_000000_000003": ("aachen", 0, 0),
                                     "bochum_000000_000010": ("bochum", 0, 7),
                                     "bochum_000000_000013": ("bochum", 0, 10)}.items():  # fmt: skip
        frames = sorted((out / "data" / clip / "origin").iterdir())
        assert [p.stem for p in frames] == [f"{city}_{seq:06d}_{k:06d}" for k in range(first, first + 6)]
        for k, p in enumerate(frames, first):
            assert p.read_bytes() == frame_png(city, seq, k)
            assert p.stat().st_nlink == 1  # a copy of its own, never a hard link
        assert [p.stem for p in (out / "data" / clip / "mask").iterdir()] == [frames[LABEL_INDEX].stem]
    mask = cv2.imread(str(out / "data" / "aachen_000001_000003" / "mask" / "aachen_000001_000003.png"), -1)
    assert mask.shape == (H, W) and mask.dtype == np.uint8
    # road (7) -> train id 0 -> raw 1; car (26) -> 13 -> 14; unlabeled, license plate, unknown 40 -> ignore
    assert mask[1, 0] == 1 and mask[20, 0] == 14 and (mask[40:] == 0).all() and (mask[0, :5] == 0).all()
    assert ctx.report.unknown_colors == {
        "gtFine/train/aachen/aachen_000001_000003_gtFine_labelIds.png": {"id 40": 5}
    }  # only values that are no Cityscapes id: 255 (-1) and the void ids are ignore by definition
    assert any("aachen_000002_000003" in n and "skipped" in n for n in ctx.report.notes)
    assert any("test split" in n for n in ctx.report.notes)
    # only the train/val frames and label ids were extracted
    extracted = [p.name for key in archives for p in (ctx.work / key).rglob("*") if p.is_file()]
    assert not [n for n in extracted if "berlin" in n or "_color" in n or "instanceIds" in n or ".json" in n]


def test_resize_and_resume(tmp_path: Path, archives: dict[str, Path]) -> None:
    """--resize writes resized frames (masks keep the label size); a re-run after the output lost files
    restores them from the archive."""
    ctx = context(tmp_path, archives, resize_wh=(48, 32))
    cityscapes.CONVERTER.build(ctx)
    frame = ctx.out / "data" / "bochum_000000_000013" / "origin" / "bochum_000000_000010.png"
    assert cv2.imread(str(frame)).shape == (32, 48, 3)
    assert cv2.imread(str(ctx.out / "data" / TRAIN[0] / "mask" / f"{TRAIN[0]}.png"), -1).shape == (H, W)
    first = sorted(p.relative_to(ctx.out) for p in ctx.out.rglob("*.png"))

    plain = context(tmp_path / "plain", archives)
    cityscapes.CONVERTER.build(plain)
    cityscapes.CONVERTER.build(context(tmp_path / "plain", archives))  # all done: nothing to redo ...
    assert not list((plain.work / "leftimg8bit_sequence").rglob("bochum*.png"))  # ... nor extracted again
    for p in (plain.out / "data" / "bochum_000000_000010").rglob("*.png"):
        p.unlink()
    again = context(tmp_path / "plain", archives)
    cityscapes.CONVERTER.build(again)
    assert sorted(p.relative_to(plain.out) for p in plain.out.rglob("*.png")) == first
    frame = plain.out / "data" / "bochum_000000_000010" / "origin" / "bochum_000000_000010.png"
    assert frame.read_bytes() == frame_png("bochum", 0, 10)
    assert len(again.report.unknown_colors) == 1  # still reported for the label finished by the first run


def test_wrong_archive_is_a_clear_error(tmp_path: Path, archives: dict[str, Path]) -> None:
    archives = {**archives, "gtfine": archives["leftimg8bit_sequence"]}  # the two swapped by mistake
    with pytest.raises(PrepareError, match="no gtFine.* --archive gtfine=PATH"):
        cityscapes.CONVERTER.build(context(tmp_path, archives))


def test_driver_end_to_end_then_train_one_step(tmp_path: Path, archives: dict[str, Path]) -> None:
    """``python -m data.prepare --only cityscapes`` on datasets/, then one training step on the result."""

    datasets = tmp_path / "datasets"
    status = cli.main(
        ["--only", "cityscapes", "--datasets-dir", str(datasets), "--no-progress", "--jobs", "1"]
    )
    root = datasets / "cityscapes"
    assert status == {"cityscapes": "prepared"} and not (datasets / ".cityscapes.partial").exists()
    report = json.loads((root / "prepare_report.json").read_text())
    assert report["clips"]["train"] == 4 and report["clips"]["val"] == 1 and report["frames"]["total"] == 30
    assert report["labelled_frames"]["total"] == 5 and report["pixels_per_class"]["car"] == 5 * 16 * W
    train_one_step("cityscapes", root, tmp_path / "ck", (H, W))
    assert any((tmp_path / "ck").rglob("*.pth"))
