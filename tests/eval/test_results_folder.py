"""Results folders are written as a whole (no stale files of an older evaluation), with a README listing them;
read-only run folders and full disks are one line, before any work where possible, and lose nothing."""

from __future__ import annotations

import errno
import gc
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from config.errors import OutputError, run_cli
from eval import benchmark
from eval.vis import image as vis_image
from eval.vis import video as vis_video
from eval.vis.outputs import RESULTS_ENTRIES, ResultsFolder
from tests.permissions import needs_chmod

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(tiny_image_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny image run (these tests write into it)."""
    return Path(shutil.copytree(tiny_image_run, tmp_path / "runs" / tiny_image_run.name))


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _readme_names(folder: Path) -> set[str]:
    lines = (folder / "README.txt").read_text().splitlines()
    return {line.split()[0].rstrip("/") for line in lines[3:]}


def test_a_results_folder_replaces_the_old_one_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "results" / "val"
    final.mkdir(parents=True)
    for name in ("metrics.json", "per_clip_tc.csv", "tc_over_time.png"):
        (final / name).write_text("old")
    results = ResultsFolder(final, "Evaluation of x on the val split")
    (results.path / "metrics.json").write_text("new")
    (results.path / "pred").mkdir()
    assert _tree(final) == {"metrics.json": b"old", "per_clip_tc.csv": b"old", "tc_over_time.png": b"old"}
    assert results.commit()
    assert sorted(p.name for p in final.iterdir()) == ["README.txt", "metrics.json", "pred"]  # nothing stale
    assert (final / "metrics.json").read_text() == "new" and os.listdir(final.parent) == ["val"]
    readme = (final / "README.txt").read_text()
    assert readme.startswith("Evaluation of x on the val split\n")
    assert re.search(r"^pred/ +" + re.escape(RESULTS_ENTRIES["pred"]) + "$", readme, re.MULTILINE)
    assert _readme_names(final) == {"README.txt", "metrics.json", "pred"}

    before = _tree(final)
    assert not ResultsFolder(final, "logits only").commit()  # nothing written: the old results stay
    failed = ResultsFolder(final, "fails")
    (failed.path / "metrics.json").write_text("half")
    staging = failed.path
    del failed  # the evaluation failed before commit()
    gc.collect()
    assert not staging.exists() and _tree(final) == before and os.listdir(final.parent) == ["val"]


def test_reevaluation_leaves_no_stale_files_and_lists_what_is_there(run: Path) -> None:
    common = [str(run), "--num-workers", "0", "--vc", "none"]
    vis_image.main(common)
    out = run / "results" / "val"
    assert (out / "per_clip_tc.csv").is_file() and (out / "tc_over_time.png").is_file()
    assert _readme_names(out) == {p.name for p in out.iterdir()}
    vis_image.main([*common, "--tc-protocol", "none", "--no-write-res"])
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "metrics.json", "per_class_iou.csv"]
    assert _readme_names(out) == {"README.txt", "metrics.json", "per_class_iou.csv"}
    vis_video.main([*common, "--tc-protocol", "none"])
    names = {p.name for p in out.iterdir()}
    assert {"side_by_side", "pred", "video", "metrics.json"} <= names and _readme_names(out) == names
    assert os.listdir(run / "results") == ["val"]  # no staging folder left


def test_a_full_disk_during_evaluation_is_one_line_and_keeps_the_old_results(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [str(run), "--num-workers", "0", "--vc", "none", "--tc-protocol", "none"]
    vis_image.main(common)
    out = run / "results" / "val"
    before = _tree(out)
    capsys.readouterr()

    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)  # the prediction PNGs
    with pytest.raises(SystemExit) as exit_:
        run_cli(vis_image.main, common)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("output error: cannot write ") and "disk full" in err
    assert err.count("\n") == 1
    gc.collect()  # the failed evaluation's folder goes with it
    assert _tree(out) == before and os.listdir(run / "results") == ["val"]


def test_the_benchmark_checks_its_folder_before_it_measures(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(self: Path, data: bytes) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", denied)  # what a read-only run folder does to a non-root user
    monkeypatch.setattr(
        benchmark, "load_streaming_model", lambda *a, **k: pytest.fail("measured before the check")
    )
    with pytest.raises(OutputError, match=f"cannot write {run / 'benchmark'}: permission denied"):
        benchmark.main([str(run), "--frames", "1", "--runs", "1", "--warmup", "0"])
    assert not list((run / "benchmark").iterdir())


@needs_chmod
@pytest.mark.parametrize("module", ["eval.vis.image", "eval.vis.video", "eval.benchmark"])
def test_a_read_only_run_is_one_line(run: Path, module: str) -> None:
    folders = [run, *(p for p in run.rglob("*") if p.is_dir())]
    before = _tree(run)
    for folder in folders:
        folder.chmod(0o555)
    try:
        proc = subprocess.run([sys.executable, "-m", module, str(run)], cwd=REPO, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert proc.returncode == 2 and proc.stderr.startswith(f"output error: cannot write {run}/")
    assert proc.stderr.count("\n") == 1 and "permission denied" in proc.stderr and _tree(run) == before
