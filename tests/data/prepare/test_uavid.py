"""The UAVid + VDD converter end to end on tiny archives in the official layout, then one training step and an
evaluation on the result."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.prepare import cli, uavid
from tests.data.prepare.archives import (
    HW,
    UNKNOWN_COLOR,
    expected_mask,
    frame_level,
    make_uavid_archives,
    make_uavid_zip,
    make_vdd_zip,
    train_one_step,
)

# 12 frames per video, labels every 5: frame 0 dropped, clips 1-5 and 6-10 (label on 5 and 10), frame 11 dropped
SMALL = {"CLIP_LEN": 5, "MIN_CLIP_LEN": 3}
TRAIN = ["000_seq1_00", "001_seq1_01", "002_seq2_00", "003_seq2_01"]
VAL = ["004_seq16_00", "005_seq16_01"]


def prepare(datasets: Path, *extra: str) -> dict:
    return cli.main(
        ["--only", "uavid", "--datasets-dir", str(datasets), "--no-progress", "--jobs", "1", *extra]
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared tiny UAVid (2 workers, so the forked path runs); seq2's frame-10 label has an unknown colour."""
    datasets = tmp_path_factory.mktemp("prep") / "datasets"
    make_uavid_archives(datasets, unknown=("seq2", 10))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SMALL.items():
            mp.setattr(uavid, name, value)
        assert prepare(datasets, "--jobs", "2") == {"uavid": "prepared"}
    return datasets / "UAVid"


def test_clips_frames_and_splits(prepared: Path) -> None:
    assert (prepared / "train.txt").read_text().split() == TRAIN
    assert (prepared / "val.txt").read_text().split() == VAL
    assert sorted(p.name for p in (prepared / "data").iterdir()) == TRAIN + VAL
    for clip in TRAIN + VAL:
        start = 1 if clip.endswith("_00") else 6
        frames = sorted((prepared / "data" / clip / "origin").iterdir())
        assert [p.name for p in frames] == [f"{i:06d}.png" for i in range(start, start + 5)]
        levels = [cv2.imread(str(p)).mean() for p in frames]
        assert np.allclose(
            levels, [frame_level(i) for i in range(start, start + 5)], atol=8
        )  # time order kept
        assert cv2.imread(str(frames[0])).shape[:2] == HW
        masks = list((prepared / "data" / clip / "mask").iterdir())
        assert [m.name for m in masks] == [frames[-1].name]  # one label, on the last frame, under its stem
    assert not list(prepared.parent.glob(".*partial")) and not list(prepared.rglob("*.tmp"))


def test_masks_have_the_vdd_overlay_and_unknown_colours_are_ignore(prepared: Path) -> None:
    for clip in TRAIN + VAL:
        (mask,) = (prepared / "data" / clip / "mask").iterdir()
        raw = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint8 and raw.ndim == 2
        np.testing.assert_array_equal(raw, expected_mask(unknown=clip == "003_seq2_01"), err_msg=clip)


def test_report(prepared: Path) -> None:
    report = json.loads((prepared / "prepare_report.json").read_text())
    assert report["complete"] is True and report["dataset"] == "uavid"
    assert report["clips"] == {"train": 4, "val": 2, "names": {"train": TRAIN, "val": VAL}}
    assert report["frames"] == {"total": 30, "train": 20, "val": 10}
    assert report["labelled_frames"]["per_clip"] == {c: 1 for c in TRAIN + VAL}
    label = "uavid_v1.5_official_release/uavid_train/seq2/Labels/000010.png"
    assert report["unknown_colors"] == {label: {",".join(map(str, UNKNOWN_COLOR)): 6}}
    expected = sum(
        np.bincount(expected_mask(unknown=c == "003_seq2_01").ravel(), minlength=9) for c in TRAIN + VAL
    )
    assert list(report["pixels_per_class"].values()) == expected.tolist()
    assert list(report["pixels_per_class"])[:3] == ["ignore", "road", "vegetation"]
    seqs = report["converter"]["sequences"]
    assert sorted(seqs) == ["seq1", "seq16", "seq2"]  # not the test sequence
    assert seqs["seq16"] == {"split": "val", "frames": 12, "labels": 3, "clips": 2}
    assert report["converter"]["vdd_overlay_pixels"]["roof"] > 0
    assert set(report["inputs"]["archives"]) == {"uavid", "vdd"}


def test_a_model_trains_and_evaluates_on_the_result(prepared: Path, tmp_path: Path) -> None:
    from eval.vis import image as vis_image

    run = train_one_step("uavid", prepared, tmp_path, HW)
    metrics = vis_image.main([str(run), "--no-write-res", "--num-workers", "0", "--tc-protocol", "none"])
    assert metrics["miou"]["frames"] == 2  # the two labelled val frames
    assert 0.0 <= metrics["miou"]["value"] <= 1.0


def test_verify_passes_on_the_result(prepared: Path, capsys: pytest.CaptureFixture) -> None:
    summary = cli.main(["verify", str(prepared), "--no-progress", "--jobs", "1"])
    assert summary["problems"] == [] and summary["clips"] == {"train": 4, "val": 2}
    assert summary["frames"] == 30 and summary["labelled_frames"] == 6 and summary["frame_sizes"] == ["96x64"]
    assert "OK" in capsys.readouterr().out


def test_sequence_without_vdd_labels_keeps_building_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SMALL.items():
        monkeypatch.setattr(uavid, name, value)
    seqs = {"seq3": "uavid_train", "seq37": "uavid_val"}
    make_uavid_zip(tmp_path / "uavid_v1.5_official_release_image.zip", seqs=seqs, top="release")  # other name
    make_vdd_zip(tmp_path / "vdd_uavid.zip", seqs=seqs, skip=("seq3",))
    prepare(tmp_path)
    root = tmp_path / "UAVid"
    assert (root / "train.txt").read_text().split() == ["000_seq3_00", "001_seq3_01"]
    assert (root / "val.txt").read_text().split() == ["002_seq37_00", "003_seq37_01"]
    raw = cv2.imread(str(root / "data" / "000_seq3_00" / "mask" / "000005.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(raw, expected_mask(vdd=False))
    notes = json.loads((root / "prepare_report.json").read_text())["notes"]
    assert any("no labels for seq3" in n for n in notes)


def test_plan_clips_drops_frame_0_and_short_chunks() -> None:
    seq = uavid.Sequence("seq5", "uavid_train", Path("v.mp4"), {0: Path("a"), 100: Path("b"), 200: Path("c")})
    seq.frames = 260  # frames 1-100, 101-200 (labels 100, 200), 201-259 (59 >= 50: kept, no label)
    notes: list[str] = []
    plans = uavid.plan_clips([seq], notes)
    assert [(p.name, p.frames.start, p.frames.stop, p.labels) for p in plans] == [
        ("000_seq5_00", 1, 101, [100]), ("001_seq5_01", 101, 201, [200]), ("002_seq5_02", 201, 260, [])]  # fmt: skip
    seq.frames = 240  # the last chunk (201-239, 39 frames) is dropped
    assert len(uavid.plan_clips([seq], notes)) == 2


def test_member_filters() -> None:
    assert uavid.uavid_member("rel/uavid_train/seq1/images.mp4")
    assert uavid.uavid_member("uavid_val/seq16/Labels/000100.png")
    assert not uavid.uavid_member("rel/uavid_train/seq1/Images/000100.png")
    assert not uavid.uavid_member("rel/uavid_test/seq21/images.mp4")
    assert not uavid.uavid_member("__MACOSX/rel/uavid_train/seq1/._images.mp4")
    assert uavid.vdd_member("UAVid7/uavid_val/seq16/VDD_Labels/000100.png")
    assert not uavid.vdd_member("UAVid7/uavid_val/seq16/Labels/000100.png")
