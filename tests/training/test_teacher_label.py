"""Stage A of online distillation: teacher labels of a stream, decoded sequentially, resumable, refused when stale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from config.errors import ConfigError, DataError
from data.catalog import SYNTHETIC
from data.synthetic.stream import LABELS, VIDEOS, StreamParams, ensure_stream
from training.online.teacher_label import (
    MANIFEST,
    iter_frames,
    label_frames,
    label_stream,
    load_teacher,
    main,
    read_seg,
    seg_path,
    stream_frames,
)

# 2 videos x 12 frames at 64x96
TINY = StreamParams(height=64, width=96, videos=2, minutes_per_video=0.05, fps=4.0, block_frames=5)


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_stream(tmp_path_factory.mktemp("stream") / "s", TINY, workers=1, progress=False)


@pytest.fixture
def dataset(stream: Path, tmp_path: Path) -> Path:
    """A private copy of the stream: labelling writes into the dataset folder."""
    return Path(shutil.copytree(stream, tmp_path / "s"))


def _args(dataset: Path, run: Path, subsample: int = 3) -> list[str]:
    return ["--dataset", str(dataset), "--teacher-run", str(run), "--teacher-subsample", str(subsample),
            "--batch-size", "3", "--device", "cpu", "--quiet"]  # fmt: skip


def _decode(path: Path) -> list[np.ndarray]:
    cap, frames = cv2.VideoCapture(str(path)), []
    while (got := cap.read())[0]:
        frames.append(cv2.cvtColor(got[1], cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def _never_seek(*_args: object) -> bool:
    raise AssertionError("cv2.VideoCapture.set called: decoding must be sequential")


def test_labels_at_every_s_t_th_frame_without_seeking(
    dataset: Path, tiny_image_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(cv2.VideoCapture, "set", _never_seek)
    result = main(_args(dataset, tiny_image_run))
    folder = dataset / LABELS / tiny_image_run.name  # the default teacher name: the run's folder name
    assert "labelled 8 frames of 2 videos" in capsys.readouterr().out
    assert result["decoded"] == 20 and result["existing"] == 0  # each video decoded up to frame 9 only
    for video in ("video_01", "video_02"):
        assert sorted(p.name for p in (folder / video).iterdir()) == [f"{i:06d}.npz" for i in (0, 3, 6, 9)]
        for i in (0, 3, 6, 9):
            seg = read_seg(folder, video, i)
            assert seg.dtype == np.uint8 and seg.shape == (64, 96) and seg.max() <= 7
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["subsample"] == 3 and manifest["classes"] == list(SYNTHETIC.class_names)
    assert manifest["videos"] == {"video_01": 12, "video_02": 12} and manifest["input_size"] == [64, 96]
    assert manifest["teacher"]["run"] == tiny_image_run.name and manifest["stream"]["params"]["videos"] == 2
    assert not list(folder.rglob("*.tmp"))
    # the file of frame 6 holds the teacher's labels of frame 6 (not of a neighbour)
    teacher, _ = load_teacher(str(tiny_image_run))
    frame6 = _decode(dataset / VIDEOS / "video_02.mp4")[6]
    again = label_frames(teacher, [frame6], "cpu")[0]
    assert (again == read_seg(folder, "video_02", 6)).mean() > 0.99


def test_rerun_writes_nothing_and_resume_decodes_only_what_is_needed(
    dataset: Path, tiny_image_run: Path, capsys: pytest.CaptureFixture
) -> None:
    main(_args(dataset, tiny_image_run))
    folder = dataset / LABELS / tiny_image_run.name
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    capsys.readouterr()
    result = main(_args(dataset, tiny_image_run))
    assert "all 8 teacher frames of the 2 videos exist; nothing to do" in capsys.readouterr().out
    assert result["labelled"] == 0 and {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    seg_path(folder, "video_01", 3).unlink()  # a killed run's missing frame: only video_01 up to frame 3
    result = main(_args(dataset, tiny_image_run))
    assert result["labelled"] == 1 and result["decoded"] == 4 and result["existing"] == 7
    assert seg_path(folder, "video_01", 3).is_file()


def test_refusals(dataset: Path, tiny_image_run: Path) -> None:
    main(_args(dataset, tiny_image_run))
    folder = dataset / LABELS / tiny_image_run.name
    with pytest.raises(
        DataError, match=r"labels made with another subsample 3 -> 2; choose another --teacher-name"
    ):
        main(_args(dataset, tiny_image_run, subsample=2))
    # a stream regenerated with other parameters: its old teacher labels are stale
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["stream"]["params"]["seed"] = 1
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="labels made with another stream"):
        main(_args(dataset, tiny_image_run))
    teacher, _ = load_teacher(str(tiny_image_run))
    with pytest.raises(ConfigError, match="not 'gd'"):  # the true labels are never overwritten
        label_stream(dataset, teacher, "gd", 3, progress=False)
    (dataset / LABELS / "mine").mkdir()
    (dataset / LABELS / "mine" / "x.npz").write_bytes(b"")
    with pytest.raises(DataError, match="teacher_label did not write"):
        label_stream(dataset, teacher, "mine", 3, progress=False)
    with pytest.raises(DataError, match="selects none"):
        label_stream(dataset, teacher, "t", 3, start=5, progress=False)


def test_stream_frames_iter_frames_and_read_seg(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stage B's rule: k * s_T for k < floor(n / s_T); at s_T = 5 a 12-frame video gives 0 and 5 (not 10)
    assert stream_frames(dataset, 5) == [("video_01", 0), ("video_01", 5), ("video_02", 0), ("video_02", 5)]
    assert stream_frames(dataset, 3, start=1) == [("video_02", i) for i in (0, 3, 6, 9)]
    monkeypatch.setattr(cv2.VideoCapture, "set", _never_seek)
    video = dataset / VIDEOS / "video_01.mp4"
    every = _decode(video)
    got = list(iter_frames(video, {11, 2, 5}))
    assert [i for i, _ in got] == [2, 5, 11]
    for i, frame in got:
        assert frame.shape == (64, 96, 3) and np.array_equal(frame, every[i])
    with pytest.raises(DataError, match="ends after 12 frames"):
        list(iter_frames(video, {12}))
    gd = read_seg(dataset / LABELS / "gd", "video_02", 11)  # the true labels read the same way
    assert gd.shape == (64, 96) and set(np.unique(gd).tolist()) <= set(range(8)) | {255}
    with pytest.raises(DataError, match="missing; label the stream first"):
        read_seg(dataset / LABELS / "gd", "video_02", 12)


def test_a_transformers_segformer_folder_as_teacher(dataset: Path, tmp_path: Path) -> None:
    tf = pytest.importorskip("transformers")
    import torch

    cfg = tf.SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             num_attention_heads=[1, 1], decoder_hidden_size=16, num_labels=3,
                             id2label={0: "road", 1: "tree", 2: "car"}, label2id={"road": 0, "tree": 1, "car": 2})  # fmt: skip
    torch.manual_seed(0)
    tf.SegformerForSemanticSegmentation(cfg).save_pretrained(tmp_path / "tiny_segformer")
    result = main(["--dataset", str(dataset), "--hf-folder", str(tmp_path / "tiny_segformer"), "--teacher-subsample",
                   "4", "--stop", "1", "--device", "cpu", "--quiet"])  # fmt: skip
    folder = dataset / LABELS / "tiny_segformer"
    assert result["labelled"] == 3 and sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["video_01"]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["input_size"] is None and manifest["classes"] == ["road", "tree", "car"]
    seg = read_seg(folder, "video_01", 8)
    assert seg.shape == (64, 96) and seg.max() <= 2  # scores resized back to the frame size
