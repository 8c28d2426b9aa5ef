"""Run folders: one writer per run, one-line errors for read-only folders and full disks, and RUNS.txt."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config.errors import CheckpointError, DataError, OutputError
from config.files import release_lock
from models.runs import locate_run
from tests.permissions import CHMOD_BITES
from training import checkpoint, train_image
from training.checkpoint import atomic_save, lock_run, new_run_dir
from training.run_index import FAILED, INDEX_NAME, log_event, update_index

REPO = Path(__file__).resolve().parents[2]


def _one_epoch(overrides: list[str]) -> list[str]:
    return ["base_synthetic", *overrides, "training_cfg.num_epochs=1"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.train_image", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_a_run_in_use_is_refused_with_one_line(tiny_overrides: list[str]) -> None:
    """Two resumes of one run used to both train and crash on a shared temporary file: the second is refused."""
    run = train_image.main(_one_epoch(tiny_overrides))
    fd = lock_run(run)  # this process is training the run
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    try:
        proc = _cli(*_one_epoch(tiny_overrides), f"resume_training={run.name}")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert (
            proc.stderr
            == f"output error: run {run.name} is in use by process {os.getpid()}; wait for it or stop it\n"
        )
        with pytest.raises(OutputError, match=f"run {run.name} is in use by process {os.getpid()}"):
            train_image.main([*_one_epoch(tiny_overrides), f"resume_training={run}"])
    finally:
        release_lock(fd)
    assert {
        p.name: p.stat().st_mtime_ns for p in run.iterdir()
    } == before  # nothing written by the refused ones
    assert train_image.main([*_one_epoch(tiny_overrides), f"resume_training={run}"]) == run  # released: fine


def test_a_finished_training_lets_go_of_its_run(tiny_overrides: list[str]) -> None:
    run = train_image.main(_one_epoch(tiny_overrides))
    fd = lock_run(run)  # would be refused if the training process still held it
    release_lock(fd)


class _FullDisk:
    """A file that accepts ``room`` bytes, then fails as a full disk does."""

    def __init__(self, path: Path, room: int) -> None:
        self.fh, self.room = open(path, "wb"), room

    def write(self, data: bytes) -> int:
        if self.fh.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.fh.write(data)

    def __getattr__(self, name: str):
        return getattr(self.fh, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "best.pth"
    atomic_save({"w": torch.zeros(4)}, path)
    state = {"model": {"w": torch.zeros(256, 1024)}}  # 1 MiB of tensors
    # torch.save turns the OS error of a write into "unexpected pos ..."; the cause must survive that
    monkeypatch.setattr(checkpoint, "open", lambda p, mode: _FullDisk(p, 300_000), raising=False)
    with pytest.raises(OutputError) as err:
        atomic_save(state, path)
    text = str(err.value)
    assert text.startswith(f"cannot write {path}: disk full (1.0 MB needed, ") and "free in" in text
    assert text.endswith("free some space or set save_dir to another folder") and "\n" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth"]  # the 300 kB temporary file is gone
    assert torch.load(path, weights_only=True)["w"].shape == (4,)  # the previous checkpoint is intact
    monkeypatch.undo()

    def no_space(obj: object, f: object) -> None:
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(OutputError, match="disk full"):
        atomic_save(state, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth"]


def test_a_read_only_save_dir_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", denied)  # what a read-only folder does to a non-root user
        with pytest.raises(OutputError, match=re.escape(f"cannot write {tmp_path / 'ro'}/") + ".*permission denied"
                           ".*set save_dir to another folder"):  # fmt: skip
            new_run_dir(tmp_path / "ro")
    if not CHMOD_BITES:
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        proc = _cli("base_synthetic", f"save_dir={ro}", "model_cfg.backbone=tiny_cnn")
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 2 and proc.stderr.startswith(f"output error: cannot write {ro}/")
    assert proc.stderr.count("\n") == 1 and "permission denied" in proc.stderr and not any(ro.iterdir())


def test_runs_txt_says_what_each_run_is_and_how_it_ended(tiny_overrides: list[str], tmp_path: Path) -> None:
    finished = train_image.main(_one_epoch(tiny_overrides))
    save_dir = finished.parent
    failed, running, stopped = (save_dir / f"2026-01-01_00-00-0{i}" for i in (1, 2, 3))
    for run in (failed, running, stopped):
        run.mkdir()
        shutil.copy(finished / "config.yaml", run / "config.yaml")
        log_event(run, "START", "config/image/base_synthetic.yaml")
    log_event(failed, FAILED, "datasets/synthetic/val.txt not found")
    (save_dir / "not_a_run").mkdir()  # no config.yaml: not listed
    fd = lock_run(running)
    try:
        update_index(save_dir)
    finally:
        release_lock(fd)
    lines = (save_dir / INDEX_NAME).read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1].split() == [
        "run",
        "kind",
        "method",
        "dataset",
        "config",
        "status",
    ]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {finished.name, failed.name, running.name, stopped.name}
    assert rows[finished.name].split() == [finished.name, "image", "upernet", "on", "tiny_cnn", "synthetic",
                                           "config/image/base_synthetic.yaml", "finished"]  # fmt: skip
    status = {name: line.split()[-1] for name, line in rows.items()}
    assert status == {finished.name: "finished", failed.name: "failed", running.name: "running",
                      stopped.name: "stopped"}  # fmt: skip
    starts = {line.index("status") if i == 0 else line.rindex(" ") + 1 for i, line in enumerate(lines[1:])}
    assert len(starts) == 1  # aligned columns


def test_a_failed_start_is_gone_from_the_folder_the_index_and_the_hints(tiny_overrides: list[str],
                                                                        tmp_path: Path) -> None:  # fmt: skip
    with pytest.raises(DataError):
        train_image.main(
            [*_one_epoch(tiny_overrides), "data_cfg.dataset=uavid", f"data_cfg.path={tmp_path / 'none'}"]
        )
    save_dir = tmp_path / "checkpoints"
    assert sorted(p.name for p in save_dir.iterdir()) == [INDEX_NAME]  # the run folder was removed
    assert len((save_dir / INDEX_NAME).read_text().splitlines()) == 2  # comment and header: no run
    with pytest.raises(CheckpointError, match="holds no runs"):
        locate_run("2026-01-01_00-00-00", save_dir)
    kept = train_image.main(_one_epoch(tiny_overrides))
    with pytest.raises(CheckpointError) as err:
        locate_run("2026-01-01_00-00-00", save_dir)
    assert str(err.value).endswith(f"runs in {save_dir}/: {kept.name}")  # the index file is no run either


def test_a_save_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "checkpoints"
    blocker.write_text("the user's notes")
    with pytest.raises(OutputError, match=f"save_dir {blocker} is a file, not a folder; set save_dir"):
        new_run_dir(blocker)
    with pytest.raises(OutputError, match="a part of the path is a file, not a folder"):
        new_run_dir(blocker / "sub")
    assert blocker.read_text() == "the user's notes"


def test_resuming_a_run_with_the_other_kinds_cli_says_which_one(tiny_overrides: list[str]) -> None:
    from config.errors import ConfigError
    from training import train_video

    run = train_image.main(_one_epoch(tiny_overrides))
    save_dir = next(o for o in tiny_overrides if o.startswith("save_dir="))
    with pytest.raises(
        ConfigError, match=f"{run.name} is an image run: resume it with python -m training.train_image"
    ):
        train_video.main(["ssp_synthetic", save_dir, f"resume_training={run.name}"])
