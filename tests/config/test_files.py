"""Writing files safely: one-line errors for read-only folders and full disks, unique temporary files, locks."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.errors import OutputError, output_error, run_cli, writing
from config.files import (
    acquire_lock,
    atomic_path,
    atomic_write_text,
    check_writable,
    is_locked,
    lock_holder,
    release_lock,
    temp_path,
)
from tests.permissions import needs_chmod

REPO = Path(__file__).resolve().parents[2]


def test_each_cause_is_one_line_naming_the_path_and_what_to_do(tmp_path: Path) -> None:
    target = tmp_path / "run" / "last.pth"
    full = output_error(
        OSError(errno.ENOSPC, "No space left on device"), target, need=48 * 2**20, fix="use X"
    )
    text = str(full)
    assert isinstance(full, OutputError) and "\n" not in text
    assert text.startswith(f"cannot write {target}: disk full (48.0 MB needed, ")
    assert f"free in {tmp_path}" in text and text.endswith("free some space or use X")
    denied = str(
        output_error(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x.tmp")), target)
    )
    assert (
        f"cannot write {target}: permission denied ({tmp_path} is not writable" in denied
    )  # not the temp name
    assert "read-only file system" in str(output_error(OSError(errno.EROFS, "Read-only file system"), target))
    assert (
        output_error(FileNotFoundError(errno.ENOENT, "No such file"), target) is None
    )  # not the user's to fix
    with pytest.raises(OutputError, match="disk quota exceeded"), writing(target):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(ValueError), writing(target):  # other errors pass unchanged
        raise ValueError("a bug")


def test_atomic_writes_use_unique_temporary_files_and_leave_none_behind(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    names = {temp_path(path).name for _ in range(20)}
    assert len(names) == 20 and all(f".metrics.json.{os.getpid()}." in n for n in names)
    atomic_write_text(path, "old")
    with pytest.raises(OutputError, match=r"disk full \(8 B needed"):
        with atomic_path(path, need=8) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


@needs_chmod
def test_a_read_only_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=f"cannot write {ro / 'results'}: permission denied"):
            check_writable(ro / "results", fix="use another folder")
        with pytest.raises(OutputError, match="permission denied"):
            atomic_write_text(ro / "a.txt", "x")
    finally:
        ro.chmod(0o755)
    assert not any(ro.iterdir())


def test_check_writable_creates_the_folder_and_leaves_no_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = check_writable(tmp_path / "a" / "b")
    assert folder.is_dir() and not any(folder.iterdir())

    def denied(self: Path, data: bytes) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", denied)  # what a read-only folder does to a non-root user
    with pytest.raises(OutputError, match=f"cannot write {folder}: permission denied"):
        check_writable(folder)


def test_a_lock_has_one_holder_whose_pid_it_names(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    assert not is_locked(path)  # no file yet
    fd = acquire_lock(path)
    assert fd is not None and lock_holder(path) == str(os.getpid()) and is_locked(path)
    assert acquire_lock(path) is None  # a second holder, even in this process, is refused
    release_lock(fd)
    assert not is_locked(path)
    fd = acquire_lock(path)
    assert fd is not None
    release_lock(fd)


def test_a_lock_dies_with_its_process(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from config.files import acquire_lock; " \
           f"assert acquire_lock({str(path)!r}) is not None; print('held', flush=True); sys.stdin.read()"  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        assert is_locked(path) and acquire_lock(path) is None and lock_holder(path) == str(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    fd = acquire_lock(path)  # killed: the kernel released it
    assert fd is not None
    release_lock(fd)


def test_run_cli_turns_an_unwrapped_write_error_into_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def main(argv: list[str] | None) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out.bin")

    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("output error: cannot write /data/out.bin: disk full")
    assert err.count("\n") == 1

    def bug(argv: list[str] | None) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file", "x")

    with pytest.raises(FileNotFoundError):  # not a write error the user fixes: the traceback stays
        run_cli(bug, [])

    def unreadable(argv: list[str] | None) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", "x")

    with pytest.raises(PermissionError):  # may come from a read: never called a write outside ``writing``
        run_cli(unreadable, [])
