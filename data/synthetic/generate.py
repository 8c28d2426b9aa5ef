"""Generating a whole synthetic set: planning clips, rendering videos in worker processes, atomic finish.

The set is written into a temporary sibling folder and renamed into place at the end; ``synthetic_meta.json``
is written last, so a folder that has it is complete. Videos are independent jobs; each returns its label
statistics, which are gathered by video index (never by completion order) so the metadata is reproducible.
"""

from __future__ import annotations

import multiprocessing
import os
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

# What a (possibly half-written) synthetic set folder may contain; anything else means it is not ours.
_OWN_ENTRIES = {"data", "train.txt", "val.txt", io.META_NAME}


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
    """True when ``folder`` may be replaced: it is empty, or it is a complete synthetic set (it has its metadata)
    and holds nothing else. A folder without metadata is never ours: generation is atomic, so it cannot be a
    half-written set, and it may well be a prepared real dataset (same ``data/``, ``train.txt``, ``val.txt``)."""
    if not folder.is_dir():
        return False
    entries = {p.name for p in folder.iterdir()}
    return not entries or (io.META_NAME in entries and entries <= _OWN_ENTRIES)


def _remove(folder: Path) -> None:
    """Delete a previous synthetic set (checked again right before, in case files were added meanwhile)."""
    if not _is_ours(folder):
        raise DataError(
            f"{folder}: exists and is not a synthetic set made by tcseg (no {io.META_NAME}); it is left untouched: "
            "choose another --out / data_cfg.path, or remove the folder yourself"
        )
    shutil.rmtree(folder)


def generate(out: Path, params: SyntheticParams, workers: int = 2, progress: bool = True) -> None:
    """Generate the set into ``out`` (replacing a previous synthetic set there).

    Writes into a temporary sibling folder and renames it at the end, so a half-written dataset never looks
    finished. ``workers`` processes render videos in parallel; the output bytes do not depend on it.
    """
    params.validate()
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not _is_ours(out):  # refuse before any work is done, never delete user files
        _remove(out)  # raises the one clear message
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
        if out.exists():
            _remove(out)
        os.replace(tmp, out)
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
