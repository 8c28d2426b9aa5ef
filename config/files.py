"""Writing files safely: unique temporary names, atomic replacement, a writability check, and folder locks.

Every file the project writes whole (checkpoints, configs, metrics, indexes) goes through :func:`atomic_path`: a
temporary sibling with a name no other process uses (pid + random suffix), renamed over the target when complete
and removed whatever happens otherwise, so a failed or concurrent write never leaves a half file under the
target's name nor a stray temporary file. OS errors a user fixes (read-only folder, full disk) become one
:class:`~config.errors.OutputError` line (:func:`~config.errors.writing`).

Locks are ``flock`` locks on a file holding the holder's pid: exclusive, never waited for, and released by the
kernel when the holder dies, so a killed process never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from config.errors import DEFAULT_FIX, writing


def temp_path(path: Path) -> Path:
    """A hidden temporary sibling of ``path`` that no other process or call picks: ``.<name>.<pid>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_path(path: str | Path, need: int | None = None, fix: str = DEFAULT_FIX) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends it is renamed over ``path``, and when the block fails
    it is deleted. A read-only folder or a full disk is one :class:`~config.errors.OutputError` (``need``: the size
    written, when known), raised after the temporary file is gone (so the free space it reports is real)."""
    path = Path(path)
    with writing(path, need, fix):
        tmp = temp_path(path)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # a no-op after the rename


def save_figure(fig: Any, path: str | Path, fix: str = DEFAULT_FIX) -> None:
    """Lay out a matplotlib figure, write it to ``path`` as a PNG atomically, and close it (also on failure)."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        with atomic_path(path, fix=fix) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def atomic_write_text(path: str | Path, text: str, fix: str = DEFAULT_FIX) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half a file)."""
    with atomic_path(path, len(text.encode()), fix) as tmp:
        tmp.write_text(text)


def check_writable(folder: str | Path, fix: str = DEFAULT_FIX) -> Path:
    """Create ``folder`` (with its parents) and check that a file can be written in it, before any long work that
    would end by writing there; a refusal is one :class:`~config.errors.OutputError`. Returns the folder."""
    folder = Path(folder)
    probe = temp_path(folder / "probe")
    with writing(folder, fix=fix):
        folder.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_bytes(b"")
        finally:
            probe.unlink(missing_ok=True)
    return folder


# A peek (:func:`is_locked`) holds a lock for a moment; a process acquiring it then tries again this often.
_LOCK_TRIES, _LOCK_RETRY_S = 3, 0.05


def acquire_lock(path: str | Path, fix: str = DEFAULT_FIX) -> int | None:
    """Take the exclusive lock of ``path`` (created if needed) and write this process's pid into it.

    Returns the open descriptor that holds the lock (give it to :func:`release_lock`), or None when another
    process holds it (:func:`lock_holder` says which). Forked children share the lock; it ends with the process."""
    path = Path(path)
    with writing(path, fix=fix):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    for attempt in range(_LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt + 1 == _LOCK_TRIES:
                os.close(fd)
                return None
            time.sleep(_LOCK_RETRY_S)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_lock(fd: int | None) -> None:
    """Release a lock taken by :func:`acquire_lock` (None: nothing held)."""
    if fd is not None:
        os.close(fd)  # closing the last descriptor of the open file releases the flock


def lock_holder(path: str | Path) -> str:
    """The pid written into a lock file, or ``"?"`` when it cannot be read."""
    try:
        return Path(path).read_text().strip() or "?"
    except OSError:
        return "?"


def is_locked(path: str | Path) -> bool:
    """True when some process (this one included, through another descriptor) holds the lock of ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # no lock file: never locked
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
