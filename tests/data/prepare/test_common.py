"""data.prepare.common: safe extraction, frame extraction, colour conversion, atomic writes, parallel map."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.prepare import common
from data.prepare.common import (
    PrepareError,
    Report,
    extract_frames,
    parallel_map,
    rgb_to_raw,
    safe_extract,
    write_png,
    write_splits,
)
from tests.data.prepare.archives import frame_level, write_video, zip_bytes


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_zip_extracts_selected_members_and_resumes(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(
        zip_bytes({"top/keep/a.txt": b"a" * 100, "top/skip/b.txt": b"b", "__MACOSX/top/._x": b"j"})
    )
    dest = safe_extract(archive, tmp_path / "out", members=lambda name: "/keep/" in name, progress=False)
    assert _files(dest) == ["top/keep/a.txt"] and (dest / "top/keep/a.txt").read_bytes() == b"a" * 100
    stamp = (dest / "top/keep/a.txt").stat().st_mtime_ns
    os.utime(dest / "top/keep/a.txt", ns=(stamp - 10**9, stamp - 10**9))
    safe_extract(archive, dest, progress=False)  # resume: the finished member is not written again
    assert (dest / "top/keep/a.txt").stat().st_mtime_ns == stamp - 10**9
    assert _files(dest) == ["top/keep/a.txt", "top/skip/b.txt"]


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil_abs.txt"])
def test_zip_member_outside_the_folder_is_refused_before_writing(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"fine.txt": b"x", name: b"evil"}))
    with pytest.raises(PrepareError, match="outside the extraction folder"):
        safe_extract(archive, tmp_path / "out", progress=False)
    assert _files(tmp_path / "out") == []  # nothing written, not even the harmless member
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_member_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16  # a symbolic link, as `zip --symlinks` stores it
        zf.writestr(info, "/etc/passwd")
    (tmp_path / "a.zip").write_bytes(buf.getvalue())
    with pytest.raises(PrepareError, match="'link' is a symbolic link"):
        safe_extract(tmp_path / "a.zip", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "link").exists()


def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info in members:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_are_refused(tmp_path: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("top/link")
    link.type, link.linkname = kind, "../../outside"
    archive = _tar(tmp_path / "a.tar.gz", [tarfile.TarInfo("top/ok.txt"), link], {"top/ok.txt": b"ok"})
    with pytest.raises(PrepareError, match="'top/link' is a link"):
        safe_extract(archive, tmp_path / "out", progress=False)
    assert not os.path.lexists(tmp_path / "out" / "top" / "link")


def test_tar_extracts_and_refuses_traversal(tmp_path: Path) -> None:
    good = _tar(tmp_path / "good.tgz", [tarfile.TarInfo("d/a.bin")], {"d/a.bin": b"\x00" * 5000})
    assert _files(safe_extract(good, tmp_path / "out", progress=False)) == ["d/a.bin"]
    evil = _tar(tmp_path / "evil.tgz", [tarfile.TarInfo("../evil.txt")], {"../evil.txt": b"x"})
    with pytest.raises(PrepareError, match="'../evil.txt' would be written outside"):
        safe_extract(evil, tmp_path / "out2", progress=False)
    assert not (tmp_path / "evil.txt").exists()


def test_corrupt_and_truncated_archives_say_redownload(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    payload = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    whole = zip_bytes({"a.bin": payload, "b.bin": payload})
    cases = {
        "garbage.zip": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "truncated.zip": whole[: len(whole) // 2],
    }
    tgz = _tar(tmp_path / "whole.tgz", [tarfile.TarInfo("a.bin")], {"a.bin": payload}).read_bytes()
    cases["truncated.tar.gz"] = tgz[: len(tgz) // 2]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.bin", payload)
    flipped = bytearray(buf.getvalue())
    flipped[1000] ^= 0xFF  # inside the stored data: a CRC error on read
    cases["crc.zip"] = bytes(flipped)
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(
            PrepareError, match=f"{name}: the archive is damaged or incomplete .*re-download it"
        ):
            safe_extract(tmp_path / name, tmp_path / f"out_{name}", progress=False)
        assert not list((tmp_path / f"out_{name}").rglob("*.tmp"))


def test_extract_frames_every_frame_in_order_and_resumes(tmp_path: Path) -> None:
    write_video(tmp_path / "v.mp4", 12)
    paths = extract_frames(tmp_path / "v.mp4", tmp_path / "f")
    assert [p.name for p in paths] == [f"{i:06d}.png" for i in range(12)]
    levels = [cv2.imread(str(p)).mean() for p in paths]
    assert np.allclose(levels, [frame_level(i) for i in range(12)], atol=8)
    (tmp_path / "f" / "000003.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in paths if p.exists()}
    assert extract_frames(tmp_path / "v.mp4", tmp_path / "f") == paths  # only the missing frame is written
    assert {p.name: p.stat().st_mtime_ns for p in paths if p.name in before} == before
    assert (tmp_path / "f" / "000003.png").is_file() and not list((tmp_path / "f").glob("*.tmp"))


def test_extract_frames_every_k_plus_last_resized_and_named(tmp_path: Path) -> None:
    write_video(tmp_path / "v.mp4", 12)
    paths = extract_frames(tmp_path / "v.mp4", tmp_path / "f", every=5, include_last=True, resize_wh=(48, 32),
                           name=lambda i: f"segfull_v_{i:06d}")  # fmt: skip
    assert [p.stem for p in paths] == [f"segfull_v_{i:06d}" for i in (0, 5, 10, 11)]
    img = cv2.imread(str(paths[-1]))
    assert img.shape == (32, 48, 3) and abs(img.mean() - frame_level(11)) < 8
    index, frame = common._decode_frame(tmp_path / "v.mp4", 11)  # the fallback when the frame count lies
    assert index == 11 and abs(frame.mean() - frame_level(11)) < 8


def test_unreadable_video_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.mp4").write_bytes(b"\x00not a video" * 100)
    for video in (tmp_path / "bad.mp4", tmp_path / "missing.mp4"):
        with pytest.raises(PrepareError, match=f"{video.name}.*re-download"):
            extract_frames(video, tmp_path / "f")


def test_rgb_to_raw_matches_exactly_and_reports_unknown_colours() -> None:
    colors = {(0, 0, 0): 0, (128, 64, 128): 1, (128, 0, 0): 7}
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[0] = (128, 64, 128)
    rgb[1] = (128, 0, 0)
    rgb[2, :2] = (128, 64, 127)  # one step away from road: not road
    rgb[3, 0] = (9, 9, 9)
    report = Report()
    raw = rgb_to_raw(rgb, colors, Path("seq1/Labels/000100.png"), report)
    assert raw.dtype == np.uint8 and raw[0].tolist() == [1] * 5 and raw[1].tolist() == [7] * 5
    assert raw[2].tolist() == [0] * 5 and raw[3].tolist() == [0] * 5
    assert report.unknown_colors == {"seq1/Labels/000100.png": {"128,64,127": 2, "9,9,9": 1}}
    rgb_to_raw(rgb, colors, "seq1/Labels/000100.png", report)  # the same file again: counts add up
    assert report.unknown_colors["seq1/Labels/000100.png"]["9,9,9"] == 2
    with pytest.raises(PrepareError, match="x.png: expected an 8-bit RGB label"):
        rgb_to_raw(rgb[..., 0], colors, "x.png", report)


def test_write_png_is_atomic_rgb_or_single_channel(tmp_path: Path) -> None:
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0] = 200  # red
    write_png(tmp_path / "a" / "rgb.png", rgb)
    write_png(tmp_path / "a" / "ids.png", np.full((3, 4), 7, np.uint8))
    assert cv2.imread(str(tmp_path / "a" / "rgb.png"))[0, 0].tolist() == [0, 0, 200]  # BGR on disk
    ids = cv2.imread(str(tmp_path / "a" / "ids.png"), cv2.IMREAD_UNCHANGED)
    assert ids.shape == (3, 4) and (ids == 7).all()
    assert _files(tmp_path / "a") == ["ids.png", "rgb.png"]


def test_parallel_map_keeps_order_runs_closures_and_propagates_errors() -> None:
    offset = 10
    assert parallel_map(lambda x: x + offset, range(7), jobs=2, desc="t", progress=False) == list(
        range(10, 17)
    )
    assert parallel_map(lambda x: x * 2, [1, 2], jobs=1, desc="t", progress=False) == [2, 4]

    def fail(x: int) -> int:
        if x == 3:
            raise PrepareError("item 3 is broken")
        return x

    for jobs in (1, 2):
        with pytest.raises(PrepareError, match="item 3 is broken"):
            parallel_map(fail, range(6), jobs=jobs, desc="t", progress=False)


def test_write_splits_one_name_per_line_without_duplicates(tmp_path: Path) -> None:
    write_splits(tmp_path, ["b", "a", "b"], [])
    assert (tmp_path / "train.txt").read_text() == "b\na\n" and (tmp_path / "val.txt").read_text() == ""
