"""Safe extraction of the downloaded archives, and :class:`PrepareError` (both re-exported by
:mod:`data.prepare.common`, which is what converters import).

Zip and tar(.gz) archives are extracted member by member through temporary files. Nothing may land outside the
target folder, links and special files are refused, a damaged archive says to re-download it, and a member that
is already extracted with the right size is skipped, so an interrupted extraction resumes.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm import tqdm

from config.errors import DataError


class PrepareError(DataError):
    """A preparation problem the user can fix: a missing, corrupt or unsafe archive, a refused folder."""

    prefix = "prepare error"


class DamagedArchive(PrepareError):
    """An archive that cannot be read to its end (truncated, corrupt, not an archive at all): re-download it.

    Its own class because a converter may add what is known about its download (not for an unsafe archive)."""


def _member_target(dest: Path, name: str, archive: Path) -> Path:
    """Where member ``name`` goes; a name that would land outside ``dest`` is a :class:`PrepareError`."""
    clean = name.replace("\\", "/")
    target = (dest / clean).resolve()
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean) or not target.is_relative_to(dest):
        raise PrepareError(
            f"{archive}: member '{name}' would be written outside the extraction folder; refusing this "
            f"archive (it is not an official download: re-download it)"
        )
    return target


def _copy_member(src: IO[bytes], target: Path, size: int, bar: tqdm) -> None:
    """Stream one member to ``target`` through a temporary file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in iter(functools.partial(src.read, 1 << 20), b""):
                f.write(chunk)
                bar.update(len(chunk))
        if tmp.stat().st_size != size:
            raise EOFError(f"member {target.name} ends early")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def _zip_members(
    zf: zipfile.ZipFile, archive: Path
) -> Iterator[tuple[str, bool, int, Callable[[], IO[bytes]]]]:
    """(name, is_dir, size, opener) per member; links and special files refused."""
    for info in zf.infolist():
        mode = info.external_attr >> 16  # Unix mode when made on Unix; the type bits may be 0 (plain file)
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
            raise PrepareError(f"{archive}: member '{info.filename}' is {kind}; refusing this archive")
        yield info.filename, info.is_dir(), info.file_size, functools.partial(zf.open, info)


def _tar_members(
    tf: tarfile.TarFile, archive: Path
) -> Iterator[tuple[str, bool, int, Callable[[], IO[bytes]]]]:
    """Same as :func:`_zip_members` for tar files (streamed: each member is checked before it is written)."""
    for info in tf:
        if not (info.isfile() or info.isdir()):
            kind = "a link" if info.issym() or info.islnk() else "a special file"
            raise PrepareError(f"{archive}: member '{info.name}' is {kind}; refusing this archive")
        yield info.name, info.isdir(), info.size, functools.partial(tf.extractfile, info)


def safe_extract(archive: Path, dest: Path, *, members: Callable[[str], bool] | None = None,
                 progress: bool = True) -> Path:  # fmt: skip
    """Extract a zip or tar(.gz) archive into ``dest`` and return ``dest``.

    Every member must resolve inside ``dest``, and links and device files are refused (a :class:`PrepareError`
    naming the member; for zips this is checked before anything is written). ``members(name)`` selects what is
    extracted; macOS ``__MACOSX/`` entries never are. A member already present with the right size is skipped,
    so an interrupted extraction resumes. A corrupt or truncated archive is a :class:`DamagedArchive` that says to
    re-download it.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    given, dest = dest, dest.resolve()  # checks compare resolved paths; the caller gets its own path back
    wanted = members or (lambda _name: True)
    damaged = f"{archive}: the archive is damaged or incomplete (%s); re-download it"
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                listing = list(_zip_members(zf, archive))
                for name, *_ in listing:  # every name is checked before the first byte is written
                    _member_target(dest, name, archive)
                _extract_all(listing, dest, archive, wanted, progress)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                _extract_all(_tar_members(tf, archive), dest, archive, wanted, progress)
        else:
            raise DamagedArchive(damaged % "neither a zip nor a tar file")
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError) as err:
        raise DamagedArchive(damaged % str(err).strip().rstrip(".")) from err
    except NotImplementedError as err:  # e.g. Deflate64, which Windows writes for very large zips
        raise PrepareError(
            f"{archive}: {err}; unpack it with 7-Zip and re-pack it as a plain zip, then run again"
        ) from err
    except OSError as err:
        if err.errno is None:  # gzip.BadGzipFile and friends: damaged data, not a file-system problem
            raise DamagedArchive(damaged % str(err).strip().rstrip(".")) from err
        raise PrepareError(f"{archive}: cannot extract into {dest}: {err.strerror} ({err.filename})") from err
    return given


def _extract_all(
    listing: Iterable[tuple[str, bool, int, Callable[[], IO[bytes]]]],
    dest: Path,
    archive: Path,
    wanted: Callable[[str], bool],
    progress: bool,
) -> None:
    with tqdm(desc=f"extract {archive.name}", unit="B", unit_scale=True, disable=not progress) as bar:
        for name, is_dir, size, opener in listing:
            target = _member_target(dest, name, archive)
            if "__MACOSX" in PurePosixPath(name.replace("\\", "/")).parts or not wanted(name):
                continue
            if is_dir:
                target.mkdir(parents=True, exist_ok=True)
            elif not (target.is_file() and target.stat().st_size == size):
                with opener() as src:
                    _copy_member(src, target, size, bar)
