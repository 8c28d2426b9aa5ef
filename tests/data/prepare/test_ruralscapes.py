"""RuralScapes converter on a tiny archive in the official layout (``Ruralscapes/videos/*.MP4`` and RGB manual
labels), with tiny extraction constants: every 2nd frame plus the last, clips of 4, at least 2 frames."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from config.errors import run_cli
from data.catalog import RURALSCAPES
from data.prepare import cli, ruralscapes
from data.prepare.common import BuildContext, PrepareError, Report
from tests.data.prepare.archives import train_one_step

H, W = 64, 96
N_FRAMES = 20  # frames 0..19; extracted: 0, 2, ..., 18 and the last, 19
LAND, RESIDENTIAL, WATER = (0, 255, 0), (255, 255, 0), (0, 0, 255)
ODD = (1, 2, 3)  # not a RuralScapes colour
# label frame numbers per video, as file names of the download (unpadded) or zero-padded
LABELS = {
    "DJI_0043": ["segfull_DJI_0043_0.png", "segfull_DJI_0043_4.png", "segfull_DJI_0043_7.png",
                 "segfull_DJI_0043_000012.png", "segfull_DJI_0043_16.png", "segfull_DJI_0043_19.png"],
    "DJI_0051": ["segfull_DJI_0051_0.png", "segfull_DJI_0051_6.png", "segfull_DJI_0051_19.png"],
}  # fmt: skip


@pytest.fixture(autouse=True)
def tiny_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ruralscapes, "FRAME_EVERY", 2)
    monkeypatch.setattr(ruralscapes, "CLIP_LEN", 4)
    monkeypatch.setattr(ruralscapes, "MIN_CLIP_LEN", 2)


def label_rgb(number: int) -> np.ndarray:
    """Top half land, bottom half residential, a water column; frame 12 has 5 pixels of an unknown colour."""
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[: H // 2], rgb[H // 2 :] = LAND, RESIDENTIAL
    rgb[:, number : number + 3] = WATER
    if number == 12:
        rgb[0, :5] = ODD
    return rgb


def make_archive(path: Path, tmp: Path) -> Path:
    """Ruralscapes.zip: two videos (frame i is grey level 10 i), their labels, and members to leave out."""
    with zipfile.ZipFile(path, "w") as zf:
        for video, names in LABELS.items():
            mp4 = tmp / f"{video}.MP4"
            writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), 50, (W, H))
            for i in range(N_FRAMES):
                writer.write(np.full((H, W, 3), 10 * i, np.uint8))
            writer.release()
            zf.write(mp4, f"Ruralscapes/videos/{video}.MP4")
            for name in names:
                number = int(name.rsplit("_", 1)[1].removesuffix(".png"))
                ok, png = cv2.imencode(".png", cv2.cvtColor(label_rgb(number), cv2.COLOR_RGB2BGR))
                zf.writestr(f"Ruralscapes/labels/manual_labels/{video}/{name}", png.tobytes())
        zf.writestr("Ruralscapes/labels/manual_labels/DJI_9999/segfull_DJI_9999_5.png", b"no video for it")
        zf.writestr("__MACOSX/Ruralscapes/videos/._DJI_0043.MP4", b"resource fork")
        zf.writestr("Ruralscapes/labels/segprop_labels/DJI_0043/x.png", b"not needed")
    return path


def context(tmp_path: Path, archive: Path, jobs: int = 1) -> BuildContext:
    stage = tmp_path / "stage"
    return BuildContext(archives={"ruralscapes": archive}, work=stage / "work", out=stage / "out",
                        resize_wh=None, jobs=jobs, progress=False, report=Report())  # fmt: skip


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "datasets").mkdir()
    return make_archive(tmp_path / "datasets" / "Ruralscapes.zip", tmp_path / "src")


def test_clips_frames_masks_and_splits(tmp_path: Path, archive: Path) -> None:
    before = archive.read_bytes()
    ctx = context(tmp_path, archive, jobs=2)
    entries = ruralscapes.CONVERTER.build(ctx)
    out = ctx.out
    assert (out / "train.txt").read_text().split() == ["000_DJI_0043_00", "001_DJI_0043_01"]
    assert (out / "val.txt").read_text().split() == ["002_DJI_0051_00"]
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "000_DJI_0043_00",
        "001_DJI_0043_01",
        "002_DJI_0051_00",
    ]
    # every 2nd frame + the last (19), less the first (0) and the last image; chunks of 4; [18] is too short
    clip0, clip1 = out / "data" / "000_DJI_0043_00", out / "data" / "001_DJI_0043_01"
    assert [p.stem for p in sorted((clip0 / "origin").iterdir())] == [
        f"segfull_DJI_0043_{n:06d}" for n in (2, 4, 6, 8)
    ]
    assert [p.stem for p in sorted((clip1 / "origin").iterdir())] == [
        f"segfull_DJI_0043_{n:06d}" for n in (10, 12, 14, 16)
    ]
    for frame in (clip0 / "origin").iterdir():  # the file's number is the original frame: grey level 10 n
        n = int(frame.stem[-6:])
        assert abs(cv2.imread(str(frame)).mean() - 10 * n) < 4
    # labels 0 and 19 are the first and last (dropped), 7 is not an extracted frame (reported)
    assert [p.stem for p in sorted((clip0 / "mask").iterdir())] == ["segfull_DJI_0043_000004"]
    assert [p.stem for p in sorted((clip1 / "mask").iterdir())] == [
        "segfull_DJI_0043_000012",
        "segfull_DJI_0043_000016",
    ]
    assert any("segfull_DJI_0043_7.png" in n and "frame 7" in n for n in ctx.report.notes)
    assert any("DJI_9999" in n for n in ctx.report.notes)
    mask = cv2.imread(str(clip1 / "mask" / "segfull_DJI_0043_000012.png"), cv2.IMREAD_UNCHANGED)
    raw = {c: v for c, v in RURALSCAPES.source_colors.items()}
    assert mask.shape == (H, W) and mask.dtype == np.uint8
    assert mask[H - 1, 0] == raw[RESIDENTIAL] and mask[1, 0] == raw[LAND] and mask[1, 12] == raw[WATER]
    assert (mask[0, :5] == 0).all()  # the unknown colour became ignore ...
    ((file, counts),) = ctx.report.unknown_colors.items()  # ... and is reported with its file
    assert file.endswith("segfull_DJI_0043_000012.png") and counts == {"1,2,3": 5}
    assert entries["train_clips"] == 2 and entries["val_clips"] == 1
    # only the videos and manual labels were extracted; the archive is untouched
    extracted = {p.name for p in (ctx.work / "ruralscapes").rglob("*") if p.is_file()}
    assert "x.png" not in extracted and "._DJI_0043.MP4" not in extracted
    assert archive.read_bytes() == before


def test_resume_after_cleared_output(tmp_path: Path, archive: Path) -> None:
    """A re-run on the same work folder finishes the job: a second run, and one after the output was lost."""
    ctx = context(tmp_path, archive)
    ruralscapes.CONVERTER.build(ctx)
    first = sorted(str(p.relative_to(ctx.out)) for p in ctx.out.rglob("*.png"))
    ruralscapes.CONVERTER.build(context(tmp_path, archive))
    for p in sorted((ctx.out / "data").rglob("*.png"))[:3]:
        p.unlink()
    again = context(tmp_path, archive)
    again.report = Report()
    ruralscapes.CONVERTER.build(again)
    assert sorted(str(p.relative_to(ctx.out)) for p in ctx.out.rglob("*.png")) == first
    assert len(again.report.unknown_colors) == 1  # the finished label's unknown colour is still reported


def test_label_names() -> None:
    assert ruralscapes.frame_number(Path("segfull_DJI_0043_50.png")) == 50
    assert ruralscapes.frame_number(Path("segfull_DJI_0043_000150.png")) == 150
    assert ruralscapes.frame_number(Path("000150.png")) == 150
    assert ruralscapes.frame_number(Path("label.png")) is None
    assert ruralscapes.wanted_member("Ruralscapes/videos/DJI_0043.MP4")
    assert ruralscapes.wanted_member("labels/manual_labels/DJI_0043/segfull_DJI_0043_50.png")
    assert not ruralscapes.wanted_member("__MACOSX/Ruralscapes/videos/._DJI_0043.MP4")
    assert not ruralscapes.wanted_member("Ruralscapes/labels/segprop_labels/DJI_0043/a.png")


def test_corrupt_archive_is_a_clear_error(tmp_path: Path, archive: Path) -> None:
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])  # a truncated download
    with pytest.raises(PrepareError, match="Ruralscapes.zip") as err:
        ruralscapes.CONVERTER.build(context(tmp_path, archive))
    assert "re-download" in str(err.value) or "incomplete" in str(err.value)


def test_driver_end_to_end_then_train_one_step(tmp_path: Path, archive: Path) -> None:
    """``python -m data.prepare --only ruralscapes`` on datasets/, then one training step on the result."""

    datasets = archive.parent
    status = cli.main(
        ["--only", "ruralscapes", "--datasets-dir", str(datasets), "--no-progress", "--jobs", "1"]
    )
    root = datasets / "ruralscapes"
    assert status == {"ruralscapes": "prepared"} and not (datasets / ".ruralscapes.partial").exists()
    report = json.loads((root / "prepare_report.json").read_text())
    assert report["labelled_frames"]["per_clip"] == {
        "000_DJI_0043_00": 1,
        "001_DJI_0043_01": 2,
        "002_DJI_0051_00": 1,
    }
    assert list(report["unknown_colors"]) == [
        "Ruralscapes/labels/manual_labels/DJI_0043/segfull_DJI_0043_000012.png"
    ]
    assert report["pixels_per_class"]["water"] > 0 and report["converter"]["train_clips"] == 2
    train_one_step("ruralscapes", root, tmp_path / "ck", (H, W))
    assert any((tmp_path / "ck").rglob("*.pth"))


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("case", ["parent_member", "absolute_member", "tar_parent_member", "wrong_archive",
                                  "damaged"])  # fmt: skip
def test_a_refused_archive_leaves_no_staging_folder_and_no_unrelated_note(
    tmp_path: Path, archive: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused archive used to leave .ruralscapes.partial/ (with its lock) behind, and every refusal carried
    the note about damaged downloads, also when the archive was unsafe rather than damaged."""
    datasets, extra = archive.parent, []
    if case in ("parent_member", "absolute_member"):
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr("../evil.txt" if case == "parent_member" else "/tmp/evil.txt", b"pwned")
    elif case == "tar_parent_member":
        archive.unlink()
        _tar(datasets / "Ruralscapes.tar.gz", {"Ruralscapes/videos/a.mp4": b"x", "../../evil.txt": b"pwned"})
        extra = ["--archive", f"ruralscapes={datasets / 'Ruralscapes.tar.gz'}"]
    elif case == "wrong_archive":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("Other/readme.txt", b"not RuralScapes")
    else:
        archive.write_bytes(archive.read_bytes()[:2000])
    before = sorted(p.name for p in datasets.iterdir())
    with pytest.raises(SystemExit) as exit_:
        run_cli(cli.main, ["--only", "ruralscapes", "--datasets-dir", str(datasets), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("prepare error: ") and err.count("\n") == 1
    expected = {"parent_member": "would be written outside", "absolute_member": "would be written outside",
                "tar_parent_member": "would be written outside", "wrong_archive": "no videos/*.mp4 inside",
                "damaged": "damaged or incomplete"}[case]  # fmt: skip
    assert expected in err
    assert ("often arrives damaged" in err) == (case == "damaged")  # the note only where it is about
    assert sorted(p.name for p in datasets.iterdir()) == before  # no .ruralscapes.partial (nor its lock)
    assert not list(tmp_path.rglob("evil.txt")) and not Path("/tmp/evil.txt").exists()
