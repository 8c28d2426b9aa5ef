"""Generating a whole synthetic set: planning clips, rendering videos in worker processes, atomic finish.

The set is written into a temporary sibling folder and renamed into place at the end; ``synthetic_meta.json``
is written last, so a folder that has it is complete. Videos are independent jobs; each returns its label
statistics, which are gathered by video index (never by completion order) so the metadata is reproducible.
Replacing a set (``--force``) deletes only the files the generator wrote there (:func:`generated_files`: the
known layout); anything the user added is kept in place.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from config.errors import ConfigError, DataError
from data.catalog import SYNTHETIC
from data.synthetic import io
from data.synthetic.params import GENERATOR_VERSION, SyntheticParams
from data.synthetic.video import SPLITS, VideoJob, render_video, video_seeds

# The generator's clip names (see plan_jobs) and the files it writes in a clip folder (see data.synthetic.io).
_CLIP_NAME = re.compile(r"\d{4,}_vid\d{2,}_\d{2,}")
_CLIP_FILE = re.compile(r"(origin|mask)/\d{6}\.png|flow/\d{6}\.npz|homographies\.npy")
_CLIP_FOLDERS = ("origin", "mask", "flow")


def plan_jobs(params: SyntheticParams) -> list[VideoJob]:
    """All videos in order (train videos first). Clip names: ``<global clip>_vid<global video>_<clip in video>``."""
    jobs, clip_no, video_no = [], 0, 0
    for split in SPLITS:
        for i, seed in enumerate(video_seeds(params, split)):
            names = tuple(
                f"{clip_no + c:04d}_vid{video_no:02d}_{c:02d}" for c in range(params.clips_per(split))
            )
            jobs.append(VideoJob(split, i, video_no, names, seed))
            clip_no += params.clips_per(split)
            video_no += 1
    return jobs


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one OpenCV thread per process: the processes already use the cores


def _run(job: VideoJob, params: SyntheticParams, data_dir: Path) -> tuple[int, dict[str, list[int]]]:
    return job.video_id, render_video(job, params, data_dir)


def _render_all(
    jobs: list[VideoJob], params: SyntheticParams, data_dir: Path, workers: int
) -> Iterator[tuple[int, Any]]:
    # Longest videos first, so that the last busy worker is not left alone with a long one.
    order = sorted(
        jobs,
        key=lambda j: (
            -len(j.clip_names) * (params.val_clip_len if j.split == "val" else params.train_clip_len)
        ),
    )
    if workers <= 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for job in order:
                yield _run(job, params, data_dir)
        finally:
            cv2.setNumThreads(threads)
        return
    # "spawn": a fresh interpreter per worker, safe whatever threads the caller (e.g. torch) has started.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
        futures = [pool.submit(_run, job, params, data_dir) for job in order]
        for fut in as_completed(futures):  # completion order only drives the progress bar; sums are exact
            yield fut.result()


def _is_ours(folder: Path) -> bool:
    """True when a set may be generated into ``folder``: it is empty, or it is a complete synthetic set (it has
    its metadata; files the user added there are kept). A folder without metadata is never ours: generation is
    atomic, so it cannot be a half-written set, and it may well be a prepared real dataset (same ``data/``,
    ``train.txt``, ``val.txt``)."""
    return folder.is_dir() and (not any(folder.iterdir()) or (folder / io.META_NAME).is_file())


def _refuse(folder: Path) -> None:
    raise DataError(
        f"{folder}: exists and is not a synthetic set made by tcseg (no {io.META_NAME}); it is left untouched: "
        "choose another --out / data_cfg.path, or remove the folder yourself"
    )


def _generated_clips(root: Path) -> list[Path]:
    """The clip folders of the set at ``root``: those its split files list, with the generator's names only (a
    name edited into ``../elsewhere`` never leads out of the set), and never through a link."""
    names = []
    for split in SPLITS:
        path = root / f"{split}.txt"
        names += path.read_text().split() if path.is_file() else []
    if (root / "data").is_symlink():
        return []
    clips = [root / "data" / n for n in dict.fromkeys(names) if _CLIP_NAME.fullmatch(n)]
    return [c for c in clips if c.is_dir() and not c.is_symlink()]


def generated_files(root: Path) -> set[Path]:
    """The files of the set at ``root`` that the generator wrote: its split files and metadata, and the frames,
    masks, flow and homographies of its clips (by the known layout). Everything else there is the user's."""
    top = [root / n for n in (*(f"{s}.txt" for s in SPLITS), io.META_NAME)]
    files = {p for p in top if p.is_file() and not p.is_symlink()}
    for clip in _generated_clips(root):
        for folder, _, names in os.walk(clip):  # links to folders are not followed
            for name in names:
                path = Path(folder) / name
                if not path.is_symlink() and _CLIP_FILE.fullmatch(path.relative_to(clip).as_posix()):
                    files.add(path)
    return files


def _user_files(root: Path, ours: set[Path]) -> list[Path]:
    """Files and links under ``root`` that the generator did not write (links are never followed)."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        found += [here / n for n in files if here / n not in ours]
        found += [here / n for n in dirs if (here / n).is_symlink()]
    return sorted(found)


def _replace(out: Path, tmp: Path) -> list[Path]:
    """Put the finished set ``tmp`` where ``out`` is, deleting only what the generator wrote in ``out``.

    Without user files, ``out`` goes and ``tmp`` is renamed into place. Otherwise the old set's files are deleted
    (its metadata first, so a crash in between never leaves a folder that looks complete), the new ones moved in
    around the user's, the metadata last. Returns the user's files kept, relative to ``out``."""
    if not out.exists():
        os.replace(tmp, out)
        return []
    if not _is_ours(out):  # checked again right before, in case the folder changed meanwhile
        _refuse(out)
    ours = generated_files(out)
    kept = _user_files(out, ours)
    clash = [p for p in kept if os.path.lexists(tmp / p.relative_to(out))]
    if clash:
        raise DataError(f"{clash[0]}: your file is where the new set writes one of its own; move it away and "
                        "run again (nothing was changed)")  # fmt: skip
    for path in sorted(ours, key=lambda p: p.name != io.META_NAME):  # the metadata first
        path.unlink()
    for clip in _generated_clips(out):  # the generator's folders, once empty (never the user's)
        for folder in (*(clip / f for f in _CLIP_FOLDERS), clip):
            if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                folder.rmdir()
    for folder in (out / "data", out):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return []
    for path in sorted((p for p in tmp.rglob("*") if p.is_file()), key=lambda p: p.name == io.META_NAME):
        dest = out / path.relative_to(tmp)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    shutil.rmtree(tmp)  # only empty folders are left in it
    return [p.relative_to(out) for p in kept]


def generate(out: Path, params: SyntheticParams, workers: int = 2, progress: bool = True) -> list[Path]:
    """Generate the set into ``out`` (replacing a previous synthetic set there, but not the user's files in it).

    Writes into a temporary sibling folder and renames it at the end, so a half-written dataset never looks
    finished. ``workers`` processes render videos in parallel; the output bytes do not depend on it. Returns the
    files in ``out`` that the generator did not write and kept (relative to ``out``).
    """
    params.validate()
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not _is_ours(out):  # refuse before any work is done, never delete user files
        _refuse(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True)
    jobs = plan_jobs(params)
    nc = SYNTHETIC.num_classes
    stats = {s: {"labelled": np.zeros(nc + 1, np.int64), "all": np.zeros(nc + 1, np.int64)} for s in SPLITS}
    split_of = {j.video_id: j.split for j in jobs}
    try:
        bar = tqdm(
            total=len(jobs), desc=f"synthetic -> {out}", unit="video", disable=not progress, file=sys.stderr
        )
        for video_id, counts in _render_all(jobs, params, data_dir, workers):
            for key, value in counts.items():
                stats[split_of[video_id]][key] += np.asarray(value, np.int64)
            bar.update(1)
        bar.close()
        for split in SPLITS:
            names = [n for j in jobs if j.split == split for n in j.clip_names]
            (tmp / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        io.write_meta(tmp, _meta(params, jobs, stats))  # last: marks the set complete
        return _replace(out, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _meta(
    params: SyntheticParams, jobs: list[VideoJob], stats: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any]:
    """The metadata: parameters, version, class table, clip counts and per-class pixel frequencies."""
    names = [*SYNTHETIC.class_names, "ignore"]

    def freq(c: np.ndarray) -> dict[str, float]:
        return {n: round(float(v) / max(1, int(c.sum())), 6) for n, v in zip(names, c, strict=True)}

    return {
        "generator": "tcseg data.synthetic",
        "version": GENERATOR_VERSION,
        "params": params.to_json(),
        "class_names": list(SYNTHETIC.class_names),
        "label_encoding": "mask PNG value = class id + 1, 0 = ignore",
        "homographies": "homographies.npy [T,3,3] float64, entry t = H_{t-1->t} on pixel coords, entry 0 = I",
        "flow": "flow/<stem>.npz float16 [H,W,2] 'forward' (t->t+1) and 'backward' (t->t-1), x then y, pixels",
        "clips": {s: sum(len(j.clip_names) for j in jobs if j.split == s) for s in SPLITS},
        "class_frequency": {s: {k: freq(v) for k, v in stats[s].items()} for s in SPLITS},
    }


def is_complete(root: Path) -> bool:
    """True when ``root`` holds a finished synthetic set (its metadata exists)."""
    return io.read_meta(Path(root)) is not None


def same_params(meta: dict[str, Any], params: SyntheticParams) -> bool:
    """True when a set's metadata was written by this generator version with these parameters."""
    return meta.get("version") == GENERATOR_VERSION and meta.get("params") == params.to_json()


def ensure_synthetic(root: Path, params: SyntheticParams | None = None, workers: int = 2) -> Path:
    """Generate the set at ``root`` unless a complete one is there already; return ``root``.

    ``params`` (default: :class:`SyntheticParams`) are used only when generating: a complete set made with
    other parameters is used as it is (frames are resized on reading anyway), and one made by another
    generator version only draws a warning that says how to regenerate it. A non-empty folder without
    ``synthetic_meta.json`` is refused (see :func:`_is_ours`), never overwritten.
    """
    root = Path(root)
    params = params or SyntheticParams()
    meta = io.read_meta(root)
    if meta is not None:
        if meta.get("version") != GENERATOR_VERSION:
            warnings.warn(
                f"{root}: synthetic set from generator version {meta.get('version')!r} (current "
                f"{GENERATOR_VERSION}); using it as it is (regenerate with "
                f"'python -m data.synthetic --out {root} --force')",
                stacklevel=2,
            )
        return root
    generate(root, params, workers=workers, progress=sys.stderr.isatty())
    return root


# SyntheticParams fields that are also command-line flags (--train-videos is what more_clips_command sets)
_CLI_FIELDS = ("seed", "height", "width", "val_videos", "clips_per_video", "val_clips_per_video", "train_clip_len",
               "val_clip_len")  # fmt: skip


def more_clips_command(root: Path, samples: int) -> str:
    """The generator command that remakes the set at ``root`` with at least ``samples`` labelled training samples
    (one per train clip): more train videos, the set's other command-line parameters kept."""
    meta = io.read_meta(Path(root)) or {}
    try:
        params = SyntheticParams.from_json(meta.get("params", {}))
    except (ConfigError, TypeError):  # written by another generator version: suggest the defaults
        params = SyntheticParams()
    default = SyntheticParams()
    kept = "".join(
        f" --{name.replace('_', '-')} {getattr(params, name)}"
        for name in _CLI_FIELDS
        if getattr(params, name) != getattr(default, name)
    )
    videos = -(-samples // params.clips_per("train"))  # ceil
    return f"python -m data.synthetic --out {root}{kept} --train-videos {videos} --force"
