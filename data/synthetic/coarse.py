"""A synthetic stand-in for an *extra* dataset labelled in a coarser taxonomy (label-space KD, ``other_methods.md`` §2).

The extra datasets of label-space unification carry ground truth in their own taxonomy, which a mapping CSV relates
to the teacher's (master) classes. This module makes such a dataset from the synthetic generator, so the whole
pipeline (mapping, prior-constrained pseudo-labels, their quality) can be run and measured without real data::

    <out>/hidden_fine/                        an ordinary synthetic set (8 fine classes), kept aside: only the
                                              pseudo-label quality measurement reads it, never training
    <out>/train.txt, val.txt, data/<clip>/origin/<stem>.png (hard links to the hidden frames)
    <out>/data/<clip>/mask/<stem>.png         coarse raw ids (labels.csv ``id``; = coarse trainId + 1, 0 = unlabeled)
    <out>/labels.csv                          the coarse taxonomy, Cityscapes style (copied to lists/ too)
    <out>/lists/master_labels_synthetic.csv   fine master classes -> compatible coarse classes (many-to-many)
    <out>/coarse_meta.json                    written last: its presence marks a complete set

    python -m data.synthetic.coarse --out datasets/synthetic_coarse
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from config.cli import CliParser, at_least
from config.errors import DataError, run_cli
from config.files import atomic_write_text
from data.catalog import SYNTHETIC
from data.synthetic import io
from data.synthetic.generate import generate, same_params
from data.synthetic.params import GENERATOR_VERSION, SyntheticParams

# Bump when a code change changes the coarse files (the hidden fine ones follow GENERATOR_VERSION).
COARSE_VERSION = 1
META_NAME = "coarse_meta.json"
HIDDEN = "hidden_fine"
MAPPING = "lists/master_labels_synthetic.csv"
LABELS_COPY = "lists/labels.csv"
_LOCK = ".coarse.lock"
_TMP = ".coarse.tmp-"
# Top-level names this module (or the generator, for hidden_fine) writes in --out; anything else is the user's.
_OURS = {HIDDEN, "train.txt", "val.txt", "data", "labels.csv", "lists", META_NAME, _LOCK}
_TEMPS = (_TMP, f".{HIDDEN}.tmp-")  # our temporary folder, and generate()'s for hidden_fine

# name, id (raw mask value), trainId, category, categoryId, hasInstances, ignoreInEval, colour (RGB)
COARSE_CLASSES: tuple[tuple[str, int, int, str, int, bool, bool, tuple[int, int, int]], ...] = (
    ("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    ("ground", 1, 0, "flat", 1, False, False, (128, 64, 128)),
    ("greenery", 2, 1, "nature", 2, False, False, (107, 142, 35)),
    ("structure", 3, 2, "construction", 3, False, False, (70, 70, 70)),
    ("mover", 4, 3, "dynamic", 4, True, False, (0, 0, 142)),
    ("water", 5, 4, "nature", 2, False, False, (0, 0, 255)),
)
# Fine class -> coarse class. Only merges, so the mapping CSV (the inverse) names exactly the fine classes each
# coarse label allows, and the teacher has a real choice only inside greenery, structure and mover.
FINE_TO_COARSE_NAMES: dict[str, str] = {
    "road": "ground", "vegetation": "greenery", "tree": "greenery", "person": "mover",
    "vehicle": "mover", "water": "water", "building": "structure", "roof": "structure",
}  # fmt: skip
_COARSE_ID = {c[0]: c[1] for c in COARSE_CLASSES}
# fine train id (0..7, SYNTHETIC order) -> coarse raw id
FINE_TO_COARSE: tuple[int, ...] = tuple(_COARSE_ID[FINE_TO_COARSE_NAMES[n]] for n in SYNTHETIC.class_names)

# raw fine mask value (train id + 1, 0 = ignore) -> coarse raw id; 255 flags a value outside the fine table
_LUT = np.full(256, 255, np.uint8)
_LUT[0] = _COARSE_ID["unlabeled"]
_LUT[1 : len(FINE_TO_COARSE) + 1] = FINE_TO_COARSE


def default_params() -> SyntheticParams:
    """The coarse set's defaults: another seed than the default synthetic set (seed 0), so its videos differ, at the
    base_synthetic crop size, with half the train videos (24 x 2 = 48 labelled train clips)."""
    return SyntheticParams(seed=1000, height=128, width=224, train_videos=24, val_videos=2)


def fine_to_coarse(raw: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
    """Raw fine mask (H, W) uint8 -> raw coarse mask, by lookup table; a value outside the fine table raises."""
    out = _LUT[raw]
    if (out == 255).any():
        bad = sorted(int(v) for v in np.unique(raw[out == 255]))[:5]
        raise DataError(f"{path}: values {bad} are not synthetic labels (0..{len(FINE_TO_COARSE)}); regenerate "
                        "the set with --force")  # fmt: skip
    return out


def read_coarse_meta(out: Path) -> dict[str, Any] | None:
    """The set's ``coarse_meta.json``, or None when it is missing (an incomplete or foreign folder)."""
    return io.read_meta(out, META_NAME)


def same_coarse(meta: dict[str, Any], params: SyntheticParams) -> bool:
    """True when a set's metadata was written by this code with these parameters."""
    return (meta.get("version"), meta.get("generator_version")) == (COARSE_VERSION, GENERATOR_VERSION) and (
        same_params({"version": GENERATOR_VERSION, "params": meta.get("params")}, params)
    )


def _done(out: Path, params: SyntheticParams, force: bool) -> bool:
    """True when a complete set with ``params`` is there (and not ``force``); raise when ``out`` is not ours."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another --out")
    if force and (out / META_NAME).is_file():  # ours, even when its metadata is unreadable
        return False
    meta = read_coarse_meta(out)
    if io.existing_set(out, meta, meta is not None and same_coarse(meta, params), params.to_json(),
                       {"version": COARSE_VERSION, "generator_version": GENERATOR_VERSION}, "a coarse synthetic set"):  # fmt: skip
        return True
    names = [p.name for p in out.iterdir()] if out.is_dir() else []
    # Without metadata the folder is ours only when an earlier run started there (hidden_fine, its temporary
    # folder or our lock): a prepared real dataset has train.txt, val.txt and data/ too, and must never be touched.
    started = any(n in (HIDDEN, _LOCK) or n.startswith(_TEMPS) for n in names)
    if names and (not started or any(n not in _OURS and not n.startswith(_TEMPS) for n in names)):
        raise DataError(f"{out}: exists and is not a coarse synthetic set made by tcseg (no {META_NAME}); it is left "
                        "untouched: choose another --out, or remove the folder yourself")  # fmt: skip
    return False


def _link(src: Path, dst: Path) -> None:
    """Hard-link a frame (no extra disk space); copy it where links are refused (another file system, FAT...)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_csv(path: Path, rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


def _build(hidden: Path, tmp: Path) -> dict[str, int]:
    """Write the coarse files of the set ``hidden`` into ``tmp``; returns the clip count per split."""
    clips: dict[str, int] = {}
    tmp.mkdir()
    for split in ("train", "val"):
        names = (hidden / f"{split}.txt").read_text().split()
        (tmp / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        clips[split] = len(names)
        for name in names:
            src, dst = hidden / "data" / name, tmp / "data" / name
            for sub in ("origin", "mask"):
                (dst / sub).mkdir(parents=True)
            for frame in sorted((src / "origin").glob("*.png")):
                _link(frame, dst / "origin" / frame.name)
            for mask in sorted((src / "mask").glob("*.png")):
                raw = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
                if raw is None or raw.ndim != 2 or raw.dtype != np.uint8:
                    raise DataError(f"{mask}: not a readable 8-bit single-channel mask; regenerate with --force")  # fmt: skip
                io.write_mask(dst / "mask" / mask.name, fine_to_coarse(raw, mask))
    header = ["name", "id", "trainId", "category", "categoryId", "hasInstances", "ignoreInEval", "color"]
    labels = [header, *([*c[:7], "({},{},{})".format(*c[7])] for c in COARSE_CLASSES)]
    # at the root (the dataset's own), and beside the mapping CSV, where read_mapping() looks by default
    for path in (tmp / "labels.csv", tmp / LABELS_COPY):
        _write_csv(path, labels)
    rows = [[k, n, FINE_TO_COARSE_NAMES[n]] for k, n in enumerate(SYNTHETIC.class_names)]
    _write_csv(tmp / MAPPING, [["id", "name", "extra classes"], *rows, [255, "void", "unlabeled"]])
    return clips


def _place(tmp: Path, out: Path) -> None:
    """Move the finished coarse files from ``tmp`` into ``out``, replacing an earlier run's (never the metadata:
    the caller writes it last)."""
    for name in ("train.txt", "val.txt", "labels.csv", LABELS_COPY, MAPPING):
        (out / name).parent.mkdir(exist_ok=True)
        os.replace(tmp / name, out / name)
    if (out / "data").exists():
        shutil.rmtree(out / "data")  # refuses a link, so never deletes through one
    os.replace(tmp / "data", out / "data")
    shutil.rmtree(tmp)


def ensure_coarse(out: Path, params: SyntheticParams | None = None, *, workers: int = 2, progress: bool = True,
                  force: bool = False) -> Path:  # fmt: skip
    """Make the coarse set at ``out`` unless a complete one with ``params`` (default :func:`default_params`) is there;
    return ``out``.

    A complete set made with other parameters is a :class:`DataError` unless ``force`` (which remakes everything,
    hidden_fine included). A killed run is resumed: a complete hidden_fine is reused and the coarse files, built in
    a temporary folder inside ``out`` (same file system: hard links and renames work), are redone."""
    out = Path(out)
    params = params or default_params()
    params.validate()
    if _done(out, params, force):
        return out
    with io.writing_set(out, _LOCK, "this set"):
        if _done(out, params, force):  # the other process may have finished it meanwhile
            return out
        (out / META_NAME).unlink(missing_ok=True)  # first: from here on the set never looks complete
        for stale in [p for p in out.iterdir() if p.name.startswith(_TEMPS)]:
            shutil.rmtree(stale, ignore_errors=True)  # killed runs' temporary folders (we hold the lock)
        hidden = out / HIDDEN
        fine = io.read_meta(hidden)
        # generate() rather than ensure_synthetic(): the latter keeps a set made with other parameters, and the
        # hidden labels must be those of the recorded parameters.
        if force or fine is None or not same_params(fine, params):
            generate(hidden, params, workers=workers, progress=progress)
        tmp = out / f"{_TMP}{os.getpid()}"
        try:
            clips = _build(hidden, tmp)
            _place(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        meta = {
            "generator": "tcseg data.synthetic.coarse", "version": COARSE_VERSION,
            "generator_version": GENERATOR_VERSION, "params": params.to_json(), "clips": clips,
            "hidden_fine": f"{HIDDEN}/data/<clip>/mask/<stem>.png: fine raw ids (train id + 1, 0 = ignore)",
            "label_encoding": "mask PNG value = coarse id = coarse trainId + 1, 0 = unlabeled",
            "fine_classes": list(SYNTHETIC.class_names), "coarse_classes": [c[0] for c in COARSE_CLASSES],
            "fine_to_coarse": FINE_TO_COARSE_NAMES, "fine_to_coarse_ids": list(FINE_TO_COARSE), "mapping": MAPPING,
        }  # fmt: skip
        atomic_write_text(out / META_NAME, json.dumps(meta, indent=2, sort_keys=True) + "\n")  # last
    return out


_INT_OPTIONS = (
    ("--seed", "seed", "random seed (the default synthetic set uses 0)"),
    ("--height", "height", "frame height in px"),
    ("--width", "width", "frame width in px"),
    ("--train-videos", "train_videos", "training videos (2 labelled clips each)"),
    ("--val-videos", "val_videos", "validation videos (densely labelled)"),
)


def build_parser() -> argparse.ArgumentParser:
    d = default_params()
    p = CliParser(
        prog="python -m data.synthetic.coarse",
        description="Generate a synthetic extra dataset in a coarse 5-class taxonomy (ground, greenery, structure, "
        "mover, water) with its labels.csv and the mapping CSV from the 8 synthetic classes; the fine labels are "
        "kept aside in <out>/hidden_fine for measuring pseudo-label quality.",
    )
    p.add_argument("--out", type=Path, required=True, help="folder to create (e.g. datasets/synthetic_coarse)")  # fmt: skip
    for flag, name, text in _INT_OPTIONS:
        p.add_argument(flag, dest=name, type=int, default=getattr(d, name), help=f"{text} (default {getattr(d, name)})")  # fmt: skip
    p.add_argument("--workers", type=at_least(1), default=2, help="worker processes; same output (default 2)")
    p.add_argument("--force", action="store_true", help="replace a set made with other parameters")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    params = dataclasses.replace(default_params(), **{n: getattr(args, n) for _, n, _ in _INT_OPTIONS})
    params.validate()
    meta = read_coarse_meta(args.out) if args.out.is_dir() and not args.force else None
    done = f"{params.train_samples} train clips, {params.val_videos * params.clips_per('val')} val clips"
    if meta is not None and same_coarse(meta, params):
        print(f"{args.out}: a complete coarse set with these parameters exists; leaving it alone: {done}")
        return
    start = time.perf_counter()
    ensure_coarse(args.out, params, workers=args.workers, progress=not args.quiet, force=args.force)
    print(f"{args.out}: generated in {time.perf_counter() - start:.1f} s: {done}; coarse labels at the root, "
          f"fine labels kept aside in {args.out / HIDDEN}")  # fmt: skip


if __name__ == "__main__":
    run_cli(main)
