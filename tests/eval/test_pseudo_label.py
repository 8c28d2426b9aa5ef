"""``python -m eval.pseudo_label``: prior-constrained pseudo-labels of the synthetic coarse-taxonomy stand-in by a tiny
tcseg run, end to end: the prior path, the no-prior path, soft targets, resume, refusals and bad mapping files."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from config.errors import ConfigError, DataError, run_cli
from data.catalog import SYNTHETIC
from data.synthetic.coarse import FINE_TO_COARSE
from eval import pseudo_label
from tests.conftest import TINY_HW

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def coarse(tiny_coarse: Path) -> Path:
    return tiny_coarse


def _args(coarse: Path, run: Path, out: Path, *more: str) -> list[str]:
    return ["synthetic_coarse", f"teacher.run={run}", f"dataset_path={coarse}", f"labels_root={out}",
            "generate_stand_in=false", f"reference_path={coarse / 'hidden_fine'}", "num_workers=0", "batch_size=2",
            "tta.scales=[1.0]", *more]  # fmt: skip


def _labels(out: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(out).as_posix(): cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            for p in sorted((out / "data").glob("*/mask/*.png"))}  # fmt: skip


def test_priors_keep_each_pixel_within_its_coarse_label(
    coarse: Path, tiny_image_run: Path, tmp_path: Path
) -> None:
    out = pseudo_label.main(_args(coarse, tiny_image_run, tmp_path / "gen", "save_soft=true"))
    assert out == tmp_path / "gen" / "synthetic_coarse"
    manifest = json.loads((out / "pseudo_labels.json").read_text())
    assert manifest["complete"] and manifest["use_priors"] and manifest["master"]["void"] == 255
    assert manifest["master"]["classes"] == list(SYNTHETIC.class_names)
    assert len(manifest["files"]["train"]) == 2 and manifest["written"] == 2
    allowed = {
        1: {0},
        2: {1, 2},
        3: {6, 7},
        4: {3, 4},
        5: {5},
        0: {255},
    }  # coarse raw id -> master ids (+ void)
    for rel, ids in _labels(out).items():
        assert ids.dtype == np.uint8 and ids.shape == TINY_HW
        raw = cv2.imread(str(coarse / rel), cv2.IMREAD_UNCHANGED)
        for coarse_id, masters in allowed.items():
            got = set(np.unique(ids[raw == coarse_id]).tolist())
            assert got <= masters, (rel, coarse_id, got)
        fine = cv2.imread(str(coarse / "hidden_fine" / rel), cv2.IMREAD_UNCHANGED)
        single = np.isin(raw, [1, 5])  # ground and water map to one master class: the label is the truth
        assert (ids[single] == fine[single] - 1).all()
        soft = np.load(out / "soft" / f"{rel.split('/')[1]}/{Path(rel).stem}.npz")["soft"].astype(np.float32)
        assert soft.shape == (8, *TINY_HW)
        kept = ids != 255
        np.testing.assert_allclose(soft.sum(0)[kept], 1.0, atol=2e-3)
        assert (soft.argmax(0)[kept] == ids[kept]).all() and (soft[:, ~kept] == 0).all()
    quality = manifest["quality"]
    assert {"pixel_acc", "miou_nan_exclude", "miou_zero", "coverage"} <= set(quality)
    assert (out / "preview" / "00.png").is_file() and (out / "all_void.txt").is_file()
    assert np.array_equal(np.asarray(FINE_TO_COARSE)[[0, 1, 2]], [1, 2, 2])  # road -> ground, greenery merged


def test_priors_give_better_pseudo_labels_than_the_plain_teacher(
    coarse: Path, tiny_image_run: Path, tmp_path: Path
) -> None:
    base = _args(coarse, tiny_image_run, tmp_path / "gen")
    with_priors = pseudo_label.main(base)
    without = pseudo_label.main([*base, "use_priors=false"])
    assert without == with_priors / "no_priors"
    q_with = json.loads((with_priors / "pseudo_labels.json").read_text())["quality"]
    q_without = json.loads((without / "pseudo_labels.json").read_text())["quality"]
    assert (
        q_without["coverage"] == 1.0
        and json.loads((without / "pseudo_labels.json").read_text())["use_priors"] is False
    )
    # a barely trained teacher: the coarse labels fix most of its mistakes
    assert q_with["pixel_acc"] > q_without["pixel_acc"] + 0.1


def test_a_rerun_does_nothing_and_says_so(coarse: Path, tiny_image_run: Path, tmp_path: Path, capsys) -> None:
    args = _args(coarse, tiny_image_run, tmp_path / "gen")
    out = pseudo_label.main(args)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "data").rglob("*.png")}
    capsys.readouterr()
    pseudo_label.main(args)
    printed = capsys.readouterr().out
    assert "all 2 pseudo-labels exist" in printed and "nothing to do" in printed
    assert {p: p.stat().st_mtime_ns for p in (out / "data").rglob("*.png")} == stamps
    # one label lost (a killed run): only it is labelled again, the rest is counted as skipped
    next(iter(stamps)).unlink()
    pseudo_label.main(args)
    assert "1 pseudo-labels exist already and are skipped; 1 to go" in capsys.readouterr().out
    manifest = json.loads((out / "pseudo_labels.json").read_text())
    assert (
        manifest["written"] == 1
        and manifest["skipped_existing"] == 1
        and len(manifest["files"]["train"]) == 2
    )
    with pytest.raises(DataError, match="other settings .*tta"):
        pseudo_label.main([*args, "tta.flip=false"])


def test_an_all_void_frame_is_listed(coarse: Path, tiny_image_run: Path, tmp_path: Path) -> None:
    extra = tmp_path / "coarse"
    shutil.copytree(coarse, extra, symlinks=True)
    mask = sorted((extra / "data").glob("*/mask/*.png"))[0]
    cv2.imwrite(str(mask), np.zeros(TINY_HW, np.uint8))  # all unlabeled -> only void is allowed
    out = pseudo_label.main(
        _args(extra, tiny_image_run, tmp_path / "gen", f"reference_path={extra / 'hidden_fine'}")
    )
    key = f"{mask.parent.parent.name}/{mask.stem}"
    assert (out / "all_void.txt").read_text().split() == [key]
    assert json.loads((out / "pseudo_labels.json").read_text())["all_void"] == [key]


def test_bad_mapping_files_are_one_line_errors(
    coarse: Path, tiny_image_run: Path, tmp_path: Path, capsys
) -> None:
    extra = tmp_path / "coarse"
    shutil.copytree(coarse, extra, symlinks=True)
    csv_path = extra / "lists" / "master_labels_synthetic.csv"
    good = csv_path.read_text()
    args = _args(extra, tiny_image_run, tmp_path / "gen", f"reference_path={extra / 'hidden_fine'}")

    csv_path.write_text(good.replace("greenery", "grenery", 1))
    with pytest.raises(SystemExit) as stop:
        run_cli(pseudo_label.main, args)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert (
        "master_labels_synthetic.csv:3: 'grenery' is not a class" in err and "did you mean 'greenery'" in err
    )

    csv_path.write_text(good)
    (extra / "lists" / "labels.csv").unlink()
    with pytest.raises(DataError, match=r"labels\.csv is missing"):
        pseudo_label.main([*args, f"labels_csv={extra / 'lists' / 'labels.csv'}"])

    # the extra class water mapped nowhere: one warning naming it, and its pixels become void
    csv_path.write_text(good.replace("5,water,water", "5,water,"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pseudo_label.main([*args, "experiment=unmapped"])
    texts = [str(w.message) for w in caught if "mapped to no master class" in str(w.message)]
    assert len(texts) == 1 and "water" in texts[0]
    assert json.loads((out / "pseudo_labels.json").read_text())["unmapped_extra_classes"] == ["water"]
    for rel, ids in _labels(out).items():
        raw = cv2.imread(str(extra / rel), cv2.IMREAD_UNCHANGED)
        assert (ids[raw == 5] == 255).all()


def test_the_teacher_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="teacher"):
        pseudo_label.main(["synthetic_coarse", f"dataset_path={tmp_path}"])
