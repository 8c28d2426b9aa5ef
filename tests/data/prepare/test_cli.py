"""The preparation driver: finding archives, refusals, idempotence, resume, staging, verify, the shell wrapper."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from config.errors import run_cli
from data.prepare import cli, uavid
from data.prepare.common import ArchiveSpec, Converter, PrepareError
from tests.data.prepare.archives import make_uavid_archives, make_uavid_zip

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def small_clips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uavid, "CLIP_LEN", 5)
    monkeypatch.setattr(uavid, "MIN_CLIP_LEN", 3)


def prepare(datasets: Path, *extra: str, only: bool = True) -> dict:
    return cli.main([*(["--only", "uavid"] if only else []), "--datasets-dir", str(datasets), "--no-progress",
                     "--jobs", "1", *extra])  # fmt: skip


def _state(paths: list[Path]) -> list[tuple[str, int, str]]:
    return [(p.name, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != "prepare_report.json"}  # fmt: skip


def test_missing_archives_name_the_expected_files(tmp_path: Path) -> None:
    with pytest.raises(PrepareError) as err:
        prepare(tmp_path)
    msg = str(err.value)
    assert "uavid_v1.5_official_release.zip" in msg and "uavid.nl" in msg and "--archive uavid=PATH" in msg
    assert "--archive vdd=PATH" in msg and "\n" not in msg
    make_uavid_zip(tmp_path / "uavid_v1.5_official_release.zip")
    with pytest.raises(PrepareError, match=r"vdd_uavid\*\.zip .*not found.*--archive vdd=PATH") as err:
        prepare(tmp_path)
    assert "uavid=PATH" not in str(err.value)


def test_without_only_prepares_what_is_present_and_says_what_was_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    other = Converter("ruralscapes", "ruralscapes", (ArchiveSpec("ruralscapes", ("Ruralscapes.zip",), "rural"),),
                      build=lambda ctx: pytest.fail("must not run"))  # fmt: skip
    monkeypatch.setattr(cli, "converters", lambda: {"uavid": uavid.CONVERTER, "ruralscapes": other})
    with pytest.raises(PrepareError, match="no dataset archive found in .*Ruralscapes.zip"):
        prepare(tmp_path, only=False)
    make_uavid_archives(tmp_path)
    assert prepare(tmp_path, only=False) == {"uavid": "prepared", "ruralscapes": "skip"}
    out = capsys.readouterr().out
    assert f"== ruralscapes: skipped, Ruralscapes.zip not found in {tmp_path}" in out
    assert "== prepared: uavid; skipped (archives not found): ruralscapes" in out


def test_renamed_archives_with_archive_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    downloads = tmp_path / "downloads"
    uavid_zip, vdd_zip = make_uavid_archives(downloads)
    uavid_zip.rename(downloads / "my_uavid.zip")
    vdd_zip.rename(downloads / "labels.zip")
    (tmp_path / "datasets").mkdir()
    monkeypatch.setenv(
        "TCSEG_CALLER_DIR", str(tmp_path)
    )  # relative paths are the caller's (process_dataset.sh)
    assert prepare(tmp_path / "datasets", "--archive", "uavid=downloads/my_uavid.zip", "--archive",
                   f"vdd={downloads / 'labels.zip'}") == {"uavid": "prepared"}  # fmt: skip
    with pytest.raises(PrepareError, match="expected KEY=PATH with KEY one of uavid, vdd"):
        prepare(tmp_path / "datasets", "--archive", "downloads/my_uavid.zip")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_archive_is_a_clear_error_and_stays_untouched(tmp_path: Path, damage: str) -> None:
    uavid_zip, vdd_zip = make_uavid_archives(tmp_path)
    data = uavid_zip.read_bytes()
    uavid_zip.write_bytes(os.urandom(4000) if damage == "garbage" else data[: len(data) * 2 // 3])
    before = _state([uavid_zip, vdd_zip])
    with pytest.raises(PrepareError, match="uavid_v1.5_official_release.zip: the archive is damaged or "
                                           "incomplete .*re-download it"):  # fmt: skip
        prepare(tmp_path)
    assert _state([uavid_zip, vdd_zip]) == before and not (tmp_path / "UAVid").exists()


def test_member_outside_the_datasets_folder_is_refused(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    make_uavid_archives(datasets, extra={"../../../../evil.txt": b"pwned", "../evil2.txt": b"pwned"})
    outside_before = sorted(p for p in tmp_path.rglob("*") if datasets not in p.parents and p != datasets)
    with pytest.raises(PrepareError, match="member '../../../../evil.txt' would be written outside"):
        prepare(datasets)
    assert (
        sorted(p for p in tmp_path.rglob("*") if datasets not in p.parents and p != datasets)
        == outside_before
    )
    assert not list(datasets.rglob("evil*.txt")) and not (datasets / "UAVid").exists()


@pytest.mark.parametrize("step", ["frames", "labels"])
def test_interrupted_run_resumes_and_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture, step: str) -> None:  # fmt: skip
    archives = make_uavid_archives(tmp_path / "clean")
    prepare(tmp_path / "clean")
    expected = _tree(tmp_path / "clean" / "UAVid")
    for a in archives:
        shutil.copy2(a, tmp_path / a.name)
    target = "extract_frames" if step == "frames" else "_convert_label"
    real, calls = getattr(uavid, target), []

    def breaks_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle
        return real(*args, **kwargs)

    monkeypatch.setattr(uavid, target, breaks_on_second_call)
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path)
    assert "run the same command to resume" in capsys.readouterr().err
    assert (tmp_path / ".UAVid.partial").is_dir() and not (tmp_path / "UAVid").exists()
    monkeypatch.setattr(uavid, "safe_extract", lambda *a, **k: pytest.fail("extracted again"))
    real_read, converted = uavid.read_rgb, []
    monkeypatch.setattr(uavid, "read_rgb", lambda *a: converted.append(a) or real_read(*a))
    assert prepare(tmp_path) == {"uavid": "prepared"}
    assert "resuming in" in capsys.readouterr().out
    # only what was not finished ran again: 2 of 3 videos, or 5 of 6 labels
    assert (len(calls), len(converted)) == ((4, 6) if step == "frames" else (8, 5))
    assert not (tmp_path / ".UAVid.partial").exists() and _tree(tmp_path / "UAVid") == expected


def test_interrupted_run_from_other_archives_starts_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    uavid_zip, _ = make_uavid_archives(tmp_path)
    real = uavid.plan_clips
    monkeypatch.setattr(uavid, "plan_clips", lambda *a: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        prepare(tmp_path)
    monkeypatch.setattr(uavid, "plan_clips", real)
    os.utime(uavid_zip, (1e9, 1e9))  # a new download of the archive: the staged files cannot be trusted
    assert prepare(tmp_path) == {"uavid": "prepared"}
    assert "building in" in capsys.readouterr().out


def test_ambiguous_archive_names_and_a_busy_staging_folder(tmp_path: Path) -> None:
    make_uavid_archives(tmp_path)
    shutil.copy(tmp_path / "VDD_UAVid7_labels.zip", tmp_path / "VDD_UAVid7_labels (1).zip")
    with pytest.raises(
        PrepareError,
        match=r"several files .* match vdd_uavid\*\.zip \(VDD_UAVid7_labels \(1\).zip, .*--archive vdd=PATH",
    ):
        prepare(tmp_path)
    partial = tmp_path / ".UAVid.partial"
    partial.mkdir()
    fd = cli._lock(partial)  # another run holds the staging folder
    try:
        with pytest.raises(PrepareError, match="in use by another preparation"):
            cli._lock(partial)
    finally:
        os.close(fd)


def test_second_run_does_nothing_and_archives_are_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    archives = list(make_uavid_archives(tmp_path))
    before = _state(archives)
    prepare(tmp_path)
    report = tmp_path / "UAVid" / "prepare_report.json"
    stamp = report.stat().st_mtime_ns
    capsys.readouterr()
    assert prepare(tmp_path) == {"uavid": "done"}
    assert "already prepared, nothing to do" in capsys.readouterr().out
    assert report.stat().st_mtime_ns == stamp and _state(archives) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*(a.name for a in archives), "UAVid"])
    for archive in archives:  # deleting the archives after preparing is fine
        archive.unlink()
    assert prepare(tmp_path) == {"uavid": "done"}


def test_foreign_output_folder_is_never_overwritten(tmp_path: Path) -> None:
    make_uavid_archives(tmp_path)
    (tmp_path / "UAVid").mkdir()
    (tmp_path / "UAVid" / "my_notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match="UAVid exists but is not a dataset prepared by this tool"):
        prepare(tmp_path, "--force")
    assert [p.name for p in (tmp_path / "UAVid").iterdir()] == ["my_notes.txt"]
    (tmp_path / "UAVid" / "my_notes.txt").unlink()  # an empty folder is fine
    assert prepare(tmp_path) == {"uavid": "prepared"}


def test_other_inputs_need_force_and_then_rebuild(tmp_path: Path) -> None:
    make_uavid_archives(tmp_path)
    prepare(tmp_path)
    with pytest.raises(PrepareError, match=r"prepared from other inputs \(resize changed\); add --force"):
        prepare(tmp_path, "--resize", "48x32")
    prepare(tmp_path, "--resize", "48x32", "--force")
    clip = tmp_path / "UAVid" / "data" / "000_seq1_00"
    assert cv2.imread(str(clip / "origin" / "000001.png")).shape == (32, 48, 3)
    assert cv2.imread(str(clip / "mask" / "000005.png"), cv2.IMREAD_UNCHANGED).shape == (64, 96)  # label size
    assert json.loads((tmp_path / "UAVid" / "prepare_report.json").read_text())["inputs"]["resize"] == [
        48,
        32,
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_verify_reports_each_problem_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_uavid_archives(tmp_path)
    prepare(tmp_path)
    root = tmp_path / "UAVid"
    cv2.imwrite(str(root / "data" / "001_seq1_01" / "mask" / "000010.png"), np.full((64, 96), 200, np.uint8))
    shutil.rmtree(root / "data" / "002_seq2_00" / "origin")
    (root / "data" / "004_seq16_00" / "origin" / "000003.png").write_bytes(b"broken")
    (root / "val.txt").write_text((root / "val.txt").read_text() + "000_seq1_00\n005_seq16_01\n")
    (root / "data" / "stray").mkdir()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(cli.main, ["verify", str(root), "--no-progress", "--jobs", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert any("000010.png: label values [200] are outside" in line for line in err)
    assert any("002_seq2_00/origin not found" in line for line in err)
    assert any("000003.png: cannot read the image" in line for line in err)
    assert any("005_seq16_01 more than once" in line for line in err)
    assert any("000_seq1_00 is in both train.txt and val.txt" in line for line in err)
    assert any("stray: not listed" in line for line in err)
    assert err[-1].startswith("prepare error: ") and "6 problem(s)" in err[-1]


def test_process_dataset_sh_help_and_one_line_errors(tmp_path: Path) -> None:
    script = REPO / "process_dataset.sh"
    assert os.access(script, os.X_OK)
    done = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--only NAME" in done.stdout and "--resize WxH" in done.stdout
    done = subprocess.run(["bash", str(script), "--only", "uavid", "--datasets-dir", "."], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert (
        done.stderr.startswith("prepare error: uavid: ") and "/uavid_v1.5_official_release.zip" in done.stderr
    )
