"""The coarse-taxonomy synthetic extra dataset: conversion, labels.csv, mapping CSV, idempotence, CLI."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from config.errors import DataError
from data.catalog import SYNTHETIC
from data.frames import read_split
from data.ontology import read_labels_csv, read_mapping
from data.synthetic import SyntheticParams
from data.synthetic.coarse import (
    FINE_TO_COARSE,
    HIDDEN,
    MAPPING,
    META_NAME,
    ensure_coarse,
    fine_to_coarse,
    main,
)

TINY = SyntheticParams(seed=1000, height=64, width=64, train_videos=1, val_videos=1)
TINY_ARGS = ["--seed", "1000", "--height", "64", "--width", "64", "--train-videos", "1", "--val-videos", "1"]


@pytest.fixture(scope="module")
def coarse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_coarse(tmp_path_factory.mktemp("coarse") / "set", TINY, workers=1, progress=False)


def _masks(root: Path) -> list[Path]:
    return sorted((root / "data").glob("*/mask/*.png"))


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def test_masks_are_the_mapped_hidden_fine_labels(coarse: Path) -> None:
    hidden = coarse / HIDDEN
    masks = _masks(coarse)
    # same clips and stems as the hidden set, every labelled frame of both splits (train last frame, val dense)
    assert [m.relative_to(coarse) for m in masks] == [m.relative_to(hidden) for m in _masks(hidden)]
    assert len(masks) == 2 + 2 * TINY.val_clip_len
    for split in ("train", "val"):
        assert (coarse / f"{split}.txt").read_text() == (hidden / f"{split}.txt").read_text()
    lut = np.zeros(256, np.uint8)
    lut[1 : len(FINE_TO_COARSE) + 1] = FINE_TO_COARSE  # fine raw = train id + 1; 0 (ignore) -> unlabeled 0
    seen = set()
    for mask in masks:
        fine, got = _read(hidden / mask.relative_to(coarse)), _read(mask)
        assert got.dtype == np.uint8 and got.ndim == 2
        np.testing.assert_array_equal(got, lut[fine])
        seen |= set(np.unique(got).tolist())
    assert seen <= {0, 1, 2, 3, 4, 5} and len(seen) >= 3
    with pytest.raises(DataError, match="not synthetic labels"):
        fine_to_coarse(np.array([[9]], np.uint8))
    # the coarse masks are also valid tcseg raw masks: the prepared-layout reader indexes them
    clips = read_split(coarse, "val", SYNTHETIC)
    assert clips and all(len(c.masks) == len(c) for c in clips)


def test_frames_are_the_hidden_frames(coarse: Path) -> None:
    frames = sorted((coarse / "data").glob("*/origin/*.png"))
    hidden = sorted((coarse / HIDDEN / "data").glob("*/origin/*.png"))
    assert len(frames) == len(hidden) == TINY.clips_per_video * (TINY.train_clip_len + TINY.val_clip_len)
    for f in frames:
        assert f.read_bytes() == (coarse / HIDDEN / f.relative_to(coarse)).read_bytes()
    assert not list((coarse / "data").glob("*/flow")) and not list(
        (coarse / "data").glob("*/homographies.npy")
    )


def test_labels_and_mapping_allow_the_true_fine_class(coarse: Path) -> None:
    classes = read_labels_csv(coarse / "labels.csv")
    assert [(c.name, c.id, c.train_id) for c in classes] == [
        ("unlabeled", 0, 255), ("ground", 1, 0), ("greenery", 2, 1), ("structure", 3, 2), ("mover", 4, 3),
        ("water", 5, 4),
    ]  # fmt: skip
    assert [c.name for c in classes if c.has_instances] == ["mover"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mapping = read_mapping(coarse / MAPPING, master=list(SYNTHETIC.class_names))
    assert mapping.unmapped == [] and mapping.matrix.sum(0).tolist() == [1, 1, 2, 2, 2, 1]  # many-to-many
    n = mapping.num_master
    for mask in _masks(coarse):
        fine = (
            _read(coarse / HIDDEN / mask.relative_to(coarse)).astype(np.int64) - 1
        )  # train ids, -1 = ignore
        allowed = mapping.candidates(_read(mask)).numpy()  # [N+1, H, W]
        truth = np.where(fine < 0, n, fine)  # ignore -> the void row
        assert np.take_along_axis(allowed, truth[None], 0).all()
        assert (allowed[n] == (fine < 0)).all()  # void exactly where the fine label is ignore


def test_second_call_does_nothing_and_other_params_need_force(
    coarse: Path, capsys: pytest.CaptureFixture
) -> None:
    before = _mtimes(coarse)
    assert ensure_coarse(coarse, TINY, workers=1, progress=False) == coarse
    main([*TINY_ARGS, "--out", str(coarse), "--quiet"])
    assert "exists; leaving it alone" in capsys.readouterr().out
    assert _mtimes(coarse) == before
    with pytest.raises(
        DataError, match=r"seed 1000 -> 7.*add --force to replace it, or choose another --out"
    ):
        ensure_coarse(coarse, dataclasses.replace(TINY, seed=7), workers=1, progress=False)
    with pytest.raises(DataError, match="--force"):
        main([*TINY_ARGS, "--out", str(coarse), "--seed", "7"])
    assert _mtimes(coarse) == before


def test_cli_resumes_a_killed_run_and_refuses_foreign_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "c"
    main([*TINY_ARGS, "--out", str(out), "--quiet", "--workers", "1"])
    assert "generated in" in capsys.readouterr().out
    assert (out / META_NAME).is_file() and (out / HIDDEN / "synthetic_meta.json").is_file()
    # a run killed after the hidden set: no metadata, coarse files gone; it is redone from the kept hidden set
    (out / META_NAME).unlink()
    for name in ("train.txt", "labels.csv"):
        (out / name).unlink()
    (out / ".coarse.tmp-999").mkdir()  # a killed run's temporary folder
    hidden_before = _mtimes(out / HIDDEN)
    ensure_coarse(out, TINY, workers=1, progress=False)
    assert (
        (out / META_NAME).is_file()
        and (out / "train.txt").is_file()
        and not (out / ".coarse.tmp-999").exists()
    )
    assert _mtimes(out / HIDDEN) == hidden_before  # the hidden set was reused, not regenerated
    # a prepared real dataset (train.txt, val.txt, data/ but no hidden_fine) is never touched
    real = tmp_path / "real"
    (real / "data").mkdir(parents=True)
    (real / "train.txt").write_text("clip\n")
    with pytest.raises(DataError, match="is not a coarse synthetic set"):
        ensure_coarse(real, TINY, workers=1, progress=False)
    assert sorted(p.name for p in real.iterdir()) == ["data", "train.txt"]
