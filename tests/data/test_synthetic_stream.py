"""The synthetic stream with a cyclic domain shift: layout, block schedule, looks, mp4 decoding, reruns, --force."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from config.errors import DataError
from data.catalog import SYNTHETIC
from data.synthetic.stream import (
    GT_NAME,
    LABELS,
    META_NAME,
    VIDEOS,
    StreamParams,
    block_schedule,
    ensure_stream,
    main,
    render_video,
    video_blocks,
    video_stem,
)
from training.online.teacher_label import list_videos, natural_key

# 2 videos x 12 frames (3 s at 4 fps), looks switching every 5 frames, across the video boundary
TINY = StreamParams(
    height=64, width=96, videos=2, minutes_per_video=0.05, fps=4.0, block_frames=5, looks=("day", "dusk")
)
ARGS = ["--height", "64", "--width", "96", "--videos", "2", "--minutes-per-video", "0.05", "--block-frames", "5",
        "--looks", "day,dusk", "--workers", "1", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_stream(tmp_path_factory.mktemp("stream") / "s", TINY, workers=1, progress=False)


def _decode(path: Path) -> list[np.ndarray]:
    """Every frame of a video, read sequentially, as RGB."""
    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    cap.release()
    return frames


def _labels(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted((root / LABELS / GT_NAME).glob("*/*.npz")):
        with np.load(path) as data:
            out[f"{path.parent.name}/{path.name}"] = data["seg"]
    return out


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def test_layout_meta_and_block_schedule(stream: Path) -> None:
    meta = json.loads((stream / META_NAME).read_text())
    assert sorted(p.name for p in (stream / VIDEOS).iterdir()) == ["video_01.mp4", "video_02.mp4"]
    assert meta["class_names"] == list(SYNTHETIC.class_names) and meta["fps"] == 4.0 and meta["frames"] == 24
    assert [(v["name"], v["frames"], v["stream_start"]) for v in meta["videos"]] == [
        ("video_01", 12, 0), ("video_02", 12, 12)]  # fmt: skip
    # the looks cycle over the whole stream, across the video boundary (frame 12 is in block 10..15)
    assert [(b["look"], b["start"], b["stop"]) for b in meta["blocks"]] == [
        ("day", 0, 5), ("dusk", 5, 10), ("day", 10, 15), ("dusk", 15, 20), ("day", 20, 24)]  # fmt: skip
    assert meta["blocks"] == block_schedule(TINY)
    assert (
        meta["videos"][1]["blocks"]
        == video_blocks(TINY, 1)
        == [[0, 3, "day"], [3, 8, "dusk"], [8, 12, "day"]]
    )
    labels = _labels(stream)
    assert sorted(labels) == [f"video_0{v}/{t:06d}.npz" for v in (1, 2) for t in range(12)]  # every frame
    values = set()
    for seg in labels.values():
        assert seg.dtype == np.uint8 and seg.shape == (64, 96)
        values |= set(np.unique(seg).tolist())
    assert values <= set(range(8)) | {255} and len(values - {255}) >= 3
    assert not (stream / ".stream.work").exists()


def test_mp4_decodes_sequentially_to_every_frame(stream: Path) -> None:
    for name in ("video_01", "video_02"):
        path = stream / VIDEOS / f"{name}.mp4"
        frames = _decode(path)
        assert len(frames) == 12 and frames[0].shape == (64, 96, 3)
        cap = cv2.VideoCapture(str(path))
        assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 12 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(4.0)
        cap.release()


def test_looks_change_colours_only(stream: Path, tmp_path: Path) -> None:
    plain = ensure_stream(tmp_path / "plain", StreamParams(**{**TINY.__dict__, "looks": ("day", "day")}),
                          workers=1, progress=False)  # fmt: skip
    # the labels do not depend on the looks: identical maps, so identical class distributions in A and B blocks
    a, b = _labels(stream), _labels(plain)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for v in range(2):
        shifted = np.stack(_decode(stream / VIDEOS / f"{video_stem(v)}.mp4")).astype(np.float64)
        day = np.stack(_decode(plain / VIDEOS / f"{video_stem(v)}.mp4")).astype(np.float64)
        for lo, hi, look in video_blocks(TINY, v):
            mean, ref = shifted[lo:hi].mean((0, 1, 2)), day[lo:hi].mean((0, 1, 2))
            if look == "day":  # the same frames (up to the codec: its references differ around B blocks)
                assert np.abs(mean - ref).max() < 4.0
            else:  # dusk: much darker and bluer than the same frames by day
                assert mean.sum() < 0.7 * ref.sum()
                assert mean[2] / mean.sum() > ref[2] / ref.sum() + 0.05
    # within the shifted stream, A and B blocks differ in mean colour as well
    frames = np.concatenate([np.stack(_decode(stream / VIDEOS / f"{video_stem(v)}.mp4")) for v in range(2)])
    looks = [blk["look"] for blk in block_schedule(TINY) for _ in range(blk["stop"] - blk["start"])]
    by_look = {k: frames[[x == k for x in looks]].astype(np.float64).mean((0, 1, 2)) for k in ("day", "dusk")}
    assert np.abs(by_look["day"] - by_look["dusk"]).sum() > 60


def test_natural_order(tmp_path: Path) -> None:
    assert natural_key("video_2.mp4") < natural_key("video_10.mp4")
    assert sorted(["video_10.mp4", "video_2.mp4", "video_1.mp4"], key=natural_key) == [
        "video_1.mp4", "video_2.mp4", "video_10.mp4"]  # fmt: skip
    names = [f"{video_stem(i)}.mp4" for i in range(101)]  # video_01 ... video_100: plain sorting breaks there
    assert sorted(names, key=natural_key) == names != sorted(names)
    (tmp_path / VIDEOS).mkdir()
    for name in ("video_10.mp4", "video_2.mp4", "video_1.mp4", "notes.txt"):
        (tmp_path / VIDEOS / name).write_bytes(b"")
    assert [p.name for p in list_videos(tmp_path)] == ["video_1.mp4", "video_2.mp4", "video_10.mp4"]
    assert [p.name for p in list_videos(tmp_path, 1, 2)] == ["video_2.mp4"]


def test_rerun_does_nothing_and_other_params_need_force(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "s"
    main([*ARGS, "--out", str(out)])
    assert "generated in" in capsys.readouterr().out
    before = _mtimes(out)
    main([*ARGS, "--out", str(out)])
    assert "leaving it alone" in capsys.readouterr().out
    assert _mtimes(out) == before
    with pytest.raises(DataError, match=r"made differently \(block_frames 5 -> 4\); add --force"):
        main([*ARGS, "--out", str(out), "--block-frames", "4"])
    (out / LABELS / "teacher_x").mkdir()  # a teacher's labels of the old stream: kept, and named as stale
    (out / "notes.txt").write_text("mine")
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    with pytest.raises(DataError, match="not a synthetic stream made by tcseg"):
        main([*ARGS, "--out", str(other)])
    main([*ARGS, "--out", str(out), "--block-frames", "4", "--force"])
    printed = capsys.readouterr().out
    assert "generated in" in printed and "teacher labels teacher_x" in printed
    meta = json.loads((out / META_NAME).read_text())
    assert meta["params"]["block_frames"] == 4 and meta["blocks"][1] == {
        "look": "dusk",
        "start": 4,
        "stop": 8,
    }
    assert (out / LABELS / "teacher_x").is_dir() and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / VIDEOS).iterdir()) == ["video_01.mp4", "video_02.mp4"]


def test_refusals_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "s"
    (out / VIDEOS).mkdir(parents=True)
    (out / VIDEOS / "holiday.mp4").write_bytes(b"")  # would join the stream
    with pytest.raises(DataError, match="holiday.mp4: not a video of this generator"):
        ensure_stream(out, TINY, workers=1, progress=False)
    (out / VIDEOS / "holiday.mp4").unlink()
    # a killed run: video 0 finished in the work folder, video 1 half-written; the rerun keeps video 0
    work = out / ".stream.work"
    (work / "done").mkdir(parents=True)
    render_video(TINY, 0, work)
    (work / LABELS / GT_NAME / "video_02").mkdir(parents=True)
    (work / LABELS / GT_NAME / "video_02" / "000000.npz").write_bytes(b"partial")
    inode = (work / VIDEOS / "video_01.mp4").stat().st_ino
    ensure_stream(out, TINY, workers=1, progress=False)
    assert (out / VIDEOS / "video_01.mp4").stat().st_ino == inode  # moved into place, not rendered again
    assert len(_decode(out / VIDEOS / "video_02.mp4")) == 12 and not work.exists()
    with np.load(out / LABELS / GT_NAME / "video_02" / "000000.npz") as data:
        assert data["seg"].shape == (64, 96)
    assert os.path.isfile(out / META_NAME)
