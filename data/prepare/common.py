"""Building blocks shared by the dataset converters: the contract types, frame extraction, colour conversion.

Everything here writes atomically (a temporary ``*.tmp`` file, then :func:`os.replace`), so an interrupted run
never leaves a half-written file under its final name, and every step skips what a previous run finished. User
mistakes (a missing, corrupt or unsafe archive, an unreadable video) are :class:`PrepareError`: one line that
names the file and says what to do.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypeVar

import cv2
import numpy as np
from tqdm import tqdm

from data.prepare.archive import DamagedArchive, PrepareError, safe_extract

__all__ = [  # the contract of data/prepare/ (PrepareError, DamagedArchive and safe_extract live in archive.py)
    "RGB", "PrepareError", "DamagedArchive", "ArchiveSpec", "Report", "BuildContext", "Converter", "safe_extract", "extract_frames",
    "rgb_to_raw", "write_png", "read_rgb", "parallel_map", "write_splits", "natural_key", "move_file", "remove_tree",
]  # fmt: skip

RGB = tuple[int, int, int]
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ArchiveSpec:
    """One archive a converter needs, found in ``datasets/`` by its official name(s)."""

    key: str  # "uavid", "vdd", "ruralscapes", "leftimg8bit_sequence", "gtfine"; also the --archive KEY
    names: tuple[str, ...]  # official file names (fnmatch patterns, case-insensitive), preferred first
    what: str  # what it is and where to download it, for error messages
    optional: bool = False


@dataclass(eq=False)
class Report:
    """What a converter found worth telling: unknown label colours (per file) and free-form notes."""

    unknown_colors: dict[str, dict[str, int]] = field(default_factory=dict)  # file -> {"r,g,b": pixels}
    notes: list[str] = field(default_factory=list)

    def unknown(self, path: Path | str, counts: dict[RGB, int]) -> None:
        """Record pixels of colours outside the table in ``path`` (pass it relative to the archive's top)."""
        if not counts:
            return
        entry = self.unknown_colors.setdefault(PurePosixPath(path).as_posix(), {})
        for color, n in counts.items():
            key = color if isinstance(color, str) else ",".join(str(int(c)) for c in color)
            entry[key] = entry.get(key, 0) + int(n)


@dataclass
class BuildContext:
    """Everything a converter's ``build`` gets from the driver."""

    archives: dict[str, Path]  # ArchiveSpec.key -> archive file (optional archives may be absent)
    work: Path  # scratch folder inside the staging area; kept by an interrupted run, deleted at the end
    out: Path  # the staging dataset root to fill: data/<clip>/{origin,mask}/*.png, train.txt, val.txt
    resize_wh: tuple[int, int] | None  # --resize W x H for extracted video frames (None = keep)
    jobs: int
    progress: bool
    report: Report


@dataclass(frozen=True)
class Converter:
    """A dataset converter: the archives it needs and the function that builds the prepared layout."""

    name: str  # = data_cfg.dataset: "uavid" | "ruralscapes" | "cityscapes"
    folder: str  # output folder under datasets/: "UAVid" | "ruralscapes" | "cityscapes"
    archives: tuple[ArchiveSpec, ...]
    build: Callable[[BuildContext], dict]  # fills ctx.out; returns dataset-specific report entries
    version: str = "1"  # bump when the output changes: a prepared dataset of another version is rebuilt


# ------------------------------------------------------------------------------------------ images, frames


def _write_encoded(path: Path, bgr_or_gray: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", bgr_or_gray)
    if not ok:
        raise PrepareError(f"{path}: could not encode the image as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # not *.png: a leftover is never read as a frame
    try:
        tmp.write_bytes(buf.tobytes())
    except OSError as err:
        raise PrepareError(f"{path}: could not write ({err.strerror}); is the disk full?") from err
    os.replace(tmp, path)


def write_png(path: Path, img: np.ndarray) -> None:
    """Write an RGB (H, W, 3) or single-channel (H, W) uint8 image as PNG, atomically, creating folders."""
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    _write_encoded(Path(path), img)


def read_rgb(path: Path, rel: Path | str | None = None) -> np.ndarray:
    """An image file as RGB (H, W, 3) uint8; unreadable -> :class:`PrepareError` naming ``rel`` (or ``path``)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise PrepareError(f"{rel or path}: cannot read this image (corrupt?); re-download its archive")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def extract_frames(video: Path, out_dir: Path, *, every: int = 1, include_last: bool = False,
                   resize_wh: tuple[int, int] | None = None,
                   name: Callable[[int], str] = "{:06d}".format) -> list[Path]:  # fmt: skip
    """Decode ``video`` in order and write frame ``i`` to ``out_dir/<name(i)>.png`` when ``i % every == 0``
    (and the last frame when ``include_last``), resized to ``resize_wh`` (W, H; bicubic) if given.

    Frames already written by an interrupted run are skipped (the video is still decoded, since it can only be
    read in order). Returns the paths of the kept frames in order. An unreadable video is a
    :class:`PrepareError`.
    """
    video, out_dir = Path(video), Path(out_dir)
    cap = cv2.VideoCapture(str(video))
    if not video.is_file() or not cap.isOpened():
        raise PrepareError(f"{video}: cannot open this video (missing, corrupt or truncated); re-download it")
    hint = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # a hint only: containers may be off by a few

    def save(i: int, frame: np.ndarray) -> None:
        if resize_wh is not None:
            frame = cv2.resize(frame, tuple(resize_wh), interpolation=cv2.INTER_CUBIC)
        _write_encoded(out_dir / f"{name(i)}.png", frame)

    kept: list[Path] = []
    held: tuple[int, np.ndarray] | None = (
        None  # the latest decoded frame, in case it turns out to be the last
    )
    i = -1
    try:
        while cap.grab():
            i += 1
            path = out_dir / f"{name(i)}.png"
            if i % every == 0:
                kept.append(path)
                if not path.is_file():
                    ok, frame = cap.retrieve()
                    if not ok:
                        raise PrepareError(f"{video}: frame {i} cannot be decoded (corrupt?); re-download it")
                    save(i, frame)
            elif include_last and (hint <= 0 or i >= hint - 2) and not path.is_file():
                ok, frame = cap.retrieve()
                held = (i, frame) if ok else held
    finally:
        cap.release()
    if i < 0:
        raise PrepareError(
            f"{video}: no frame could be decoded (corrupt or truncated video?); re-download it"
        )
    if include_last and i % every != 0:
        last = out_dir / f"{name(i)}.png"
        if not last.is_file():
            if held is None or held[0] != i:  # the frame-count hint was wrong: decode again up to the end
                held = _decode_frame(video, i)
            save(i, held[1])
        kept.append(last)
    return kept


def _decode_frame(video: Path, index: int) -> tuple[int, np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    try:
        for _ in range(index):
            cap.grab()
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise PrepareError(f"{video}: frame {index} could not be decoded on a second pass; re-download it")
    return index, frame


@functools.lru_cache(maxsize=4)
def _color_lut(table: tuple[tuple[RGB, int], ...]) -> np.ndarray:
    """(2**24,) uint8 lookup: packed RGB -> raw value, 255 for colours outside the table (16 MiB, cached)."""
    lut = np.full(1 << 24, 255, np.uint8)
    for (r, g, b), value in table:
        if not 0 <= value < 255:
            raise ValueError(f"raw value {value} of colour {(r, g, b)} must be in 0..254")
        lut[(r << 16) | (g << 8) | b] = value
    return lut


def rgb_to_raw(rgb: np.ndarray, colors: dict[RGB, int], path: Path | str, report: Report) -> np.ndarray:
    """RGB label (H, W, 3) uint8 -> raw mask (H, W) uint8 by exact colour match (no tolerance).

    Pixels of any other colour become 0 (ignore) and are counted per colour in ``report.unknown(path, ...)``:
    they are reported, never mapped to the nearest class.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise PrepareError(f"{path}: expected an 8-bit RGB label image, got shape {rgb.shape} {rgb.dtype}")
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    raw = _color_lut(tuple(sorted(colors.items())))[packed]
    unknown = raw == 255
    if unknown.any():
        codes, counts = np.unique(packed[unknown], return_counts=True)
        report.unknown(path, {(int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255): int(n)
                              for c, n in zip(codes, counts, strict=True)})  # fmt: skip
        raw[unknown] = 0
    return raw


# --------------------------------------------------------------------------------------- parallelism, splits

_TASK: tuple[Callable, Sequence] | None = None  # the current parallel_map job, inherited by forked workers


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def _run_item(index: int):
    fn, items = _TASK
    return fn(items[index])


def parallel_map(fn: Callable[[T], R], items: Sequence[T], jobs: int, desc: str, progress: bool) -> list[R]:
    """``[fn(x) for x in items]`` over ``jobs`` forked processes (in this process when ``jobs`` <= 1), with a
    progress bar; order is kept and the first exception propagates.

    ``fn`` and ``items`` reach the workers by fork, so closures and lambdas work; results must pickle. Workers
    are copies: what ``fn`` changes in a shared object (a :class:`Report`) is lost, so return it instead.
    """
    global _TASK
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, disable=not progress)
    try:
        if jobs <= 1 or len(items) <= 1:
            out = []
            for item in items:
                out.append(fn(item))
                bar.update()
            return out
        _TASK = (fn, items)
        ctx = multiprocessing.get_context("fork")
        # OpenCV's thread pool does not survive a fork: once this process has run a parallel OpenCV call, a forked
        # child hangs in its first OpenCV call. One thread here while the pool forks; the setting is restored after.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with ctx.Pool(min(jobs, len(items)), initializer=_worker_init) as pool:
                out = []
                for result in pool.imap(_run_item, range(len(items))):
                    out.append(result)
                    bar.update()
                return out
        finally:
            cv2.setNumThreads(threads)
    finally:
        _TASK = None
        bar.close()


def write_splits(out: Path, train: Sequence[str], val: Sequence[str]) -> None:
    """Write ``train.txt`` and ``val.txt`` (one clip folder name per line, duplicates removed, order kept)."""
    for split, names in (("train", train), ("val", val)):
        path = Path(out) / f"{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{n}\n" for n in dict.fromkeys(names)))
        os.replace(tmp, path)


def natural_key(text: str) -> list:
    """Sort key that orders ``seq2`` before ``seq10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def move_file(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` (same file system); already moved by an interrupted run is fine."""
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    elif not dst.is_file():
        raise PrepareError(
            f"{src}: missing, and not moved to {dst} either; delete the .partial folder and re-run"
        )


def remove_tree(path: Path) -> None:
    """Delete a folder of ours (the staging area); a missing one is fine."""
    if path.exists():
        shutil.rmtree(path)
