"""User-facing errors and the one place that turns them into a one-line message and exit code 2.

Every mistake a user can fix (a misspelt key, a missing dataset, a missing checkpoint, a read-only folder or a
full disk) raises a subclass of :class:`UserError`; :func:`writing` turns the OS errors of writing into one.
Command-line entry points run through :func:`run_cli`, which prints ``<prefix>: <message>`` on stderr and exits
with code 2, without a traceback. Programming errors keep their tracebacks.
"""

from __future__ import annotations

import difflib
import errno
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """An error the user can fix. Its message is one line that names the file or key and says what to do."""

    prefix = "error"


class ConfigError(UserError):
    """A bad config file, key, type or value."""

    prefix = "config error"


class DataError(UserError):
    """A missing or malformed dataset, image or label file."""

    prefix = "data error"


class CheckpointError(UserError):
    """A missing, unreadable or mismatched checkpoint or weights file."""

    prefix = "checkpoint error"


class OutputError(UserError):
    """A file or folder that cannot be written: read-only, permission denied, disk full, or in use elsewhere."""

    prefix = "output error"


# The OS errors of writing that the user fixes (the folder's permissions, the disk), not the program: errno -> cause.
_WRITE_CAUSES = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}
_WRITE_ONLY = {errno.EROFS, errno.ENOSPC, errno.EDQUOT}
DEFAULT_FIX = "write somewhere else"


def _size(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``47.9 MB``, ``1.2 GB``."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def _existing_folder(path: Path) -> Path:
    """The folder a write of ``path`` happens in (itself when it is a folder), or its nearest existing parent."""
    folder = path if path.is_dir() else path.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def output_error(
    err: OSError, path: str | Path | None = None, need: int | None = None, fix: str = DEFAULT_FIX
) -> OutputError | None:
    """The one-line :class:`OutputError` for an OS error of writing ``path`` (read-only folder, permission denied,
    full disk: naming the path, the cause and, for a full disk, the space needed and free), or None when ``err``
    is another error (a program error keeps its traceback). ``fix`` is the alternative the user has. The message
    names ``path`` (not the temporary file that failed), else the file of the error."""
    cause = _WRITE_CAUSES.get(err.errno)
    if cause is None:
        return None
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    if full:
        todo = f"free some space or {fix}"
    elif err.errno == errno.EROFS:
        todo = fix  # nobody makes a read-only file system writable for one command
    else:
        todo = f"make it writable or {fix}"
    known = path if path is not None else err.filename
    if not known:  # a write deep inside a library: the cause is still the user's to fix
        return OutputError(f"cannot write a file (the system did not say which): {cause}; {todo}")
    target = Path(known)
    folder = _existing_folder(target)
    if full:
        try:
            free = f"{_size(shutil.disk_usage(folder).free)} free in {folder}"
        except OSError:
            free = f"free space in {folder} unknown"
        needed = f"{_size(need)} needed, " if need else ""
        return OutputError(f"cannot write {target}: {cause} ({needed}{free}); {todo}")
    if err.errno in (errno.EROFS, errno.ENOTDIR):
        return OutputError(f"cannot write {target}: {cause}; {fix if err.errno == errno.ENOTDIR else todo}")
    return OutputError(f"cannot write {target}: {cause} ({folder} is not writable for this user); {todo}")


@contextmanager
def writing(path: str | Path, need: int | None = None, fix: str = DEFAULT_FIX) -> Iterator[None]:
    """Run a block that writes ``path``: a read-only folder or a full disk becomes one :class:`OutputError` line
    (see :func:`output_error`); ``need`` is the size being written, when known. Other errors pass unchanged."""
    try:
        yield
    except OSError as err:
        user = output_error(err, path, need, fix)
        if user is None:
            raise
        raise user from err


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest choice, or an empty string when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def user_message(err: UserError) -> str:
    """The one-line message of ``err``, also when a data-loader worker raised it.

    PyTorch re-raises a worker's exception with the same type but the worker's whole traceback as its message
    (``Caught DataError in DataLoader worker process 0. Original Traceback ...``); the user's line is its last.
    """
    text = str(err)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
        text = last.partition(f"{type(err).__name__}: ")[2] or last
    return text


def error_line(err: UserError) -> str:
    """The line a user error ends a command with: ``<prefix>: <message>``."""
    return f"{err.prefix}: {user_message(err)}"


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a CLI ``main``; a :class:`UserError` (or an OS error of writing, see :func:`output_error`) becomes one
    line on stderr and exit code 2."""
    try:
        main(argv)
    except UserError as err:
        print(error_line(err), file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        # A write outside any ``writing`` block: one line too when only a write can have caused it (a full disk, a
        # read-only file system); a permission error may come from a read, which keeps its traceback.
        user = output_error(err) if err.errno in _WRITE_ONLY else None
        if user is None:
            raise
        print(error_line(user), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
