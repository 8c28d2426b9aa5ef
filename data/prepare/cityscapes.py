"""Cityscapes sequences converter: ``leftImg8bit_sequence`` snippets + ``gtFine`` labels -> prepared clips.

Accepted archives (the official downloads of cityscapes-dataset.com; one enclosing folder is allowed)::

    leftImg8bit_sequence_trainvaltest.zip
        leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine_trainvaltest.zip
        gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Only the train and val frames and the ``*_labelIds.png`` of train and val are extracted (the test split has no
public labels and is skipped). Every labelled frame ``f`` makes one clip ``<city>_<seq>_<f>`` of the
``SNIPPET_LEN`` frames from ``f - LABEL_INDEX`` on (30 frames, the label on the 20th: ``f = 000019`` for most
cities; cities recorded as one long sequence have other ``f``). Frame and mask stems are
``<city>_<seq>_<frame>``. A snippet with a missing frame is reported in the notes and skipped.

Labels: label id -> ``train id + 1`` (0 = ignore) with the catalog's table. Every id that Cityscapes defines
but does not train on (0-6, 9, 10, 14-16, 18, 29, 30, and 255, the uint8 form of -1) is ignore by definition;
values 34-254 are no Cityscapes id: they become ignore too, and are reported with their file.

Frames are PNG already: without ``--resize`` they are moved out of the work folder (copied where snippets
overlap), never re-encoded and never hard-linked to anything of the user's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from data.catalog import CITYSCAPES
from data.prepare.common import (
    ArchiveSpec,
    BuildContext,
    Converter,
    PrepareError,
    parallel_map,
    safe_extract,
    write_png,
    write_splits,
)

SNIPPET_LEN = 30
LABEL_INDEX = 19  # the labelled frame is the 20th of its snippet
SPLITS = ("train", "val")
NUM_LABEL_IDS = 34  # Cityscapes label ids 0..33

SEQUENCE = ArchiveSpec(
    key="leftimg8bit_sequence",
    names=("leftImg8bit_sequence_trainvaltest.zip",),
    what="Cityscapes leftImg8bit_sequence_trainvaltest.zip (30-frame snippets, cityscapes-dataset.com)",
)
GTFINE = ArchiveSpec(
    key="gtfine",
    names=("gtFine_trainvaltest.zip",),
    what="Cityscapes gtFine_trainvaltest.zip (fine annotations, cityscapes-dataset.com)",
)

_FRAME = re.compile(r"(?:^|/)leftImg8bit_sequence/(?:train|val)/[^/]+/[^/]+_leftImg8bit\.png$")
_LABEL = re.compile(r"(?:^|/)gtFine/(?:train|val)/[^/]+/[^/]+_gtFine_labelIds\.png$")
_STEM = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_gtFine_labelIds$")


def label_lut() -> np.ndarray:
    """(256,) uint8: Cityscapes label id -> raw mask value (train id + 1, 0 = ignore)."""
    lut = np.zeros(256, np.uint8)
    for label_id, train_id in CITYSCAPES.source_ids.items():
        lut[label_id] = train_id + 1
    return lut


def _extract(
    ctx: BuildContext, spec: ArchiveSpec, pattern: re.Pattern, force: bool = False
) -> tuple[Path, bool]:
    """Extract the wanted members of one archive into ``work/<key>`` once; returns (folder, extracted now).

    A marker skips the extraction on a resumed run: the frames moved out of the work folder since would
    otherwise all be extracted again."""
    dest = ctx.work / spec.key
    marker = ctx.work / f"{spec.key}.extracted"
    if marker.is_file() and not force:
        return dest, False
    safe_extract(ctx.archives[spec.key], dest, members=partial(_wanted, pattern), progress=ctx.progress)
    marker.touch()
    return dest, True


def _wanted(pattern: re.Pattern, name: str) -> bool:
    return bool(pattern.search(name.replace("\\", "/")))


def _top(ctx: BuildContext, spec: ArchiveSpec, dest: Path, folder: str) -> Path:
    """``dest/<folder>`` or ``dest/<one enclosing folder>/<folder>``."""
    for root in (dest, *sorted(p for p in dest.iterdir() if p.is_dir())) if dest.is_dir() else ():
        if (root / folder).is_dir():
            return root / folder
    raise PrepareError(
        f"{ctx.archives[spec.key]}: no {folder}/train or {folder}/val inside; is this the right Cityscapes "
        f"download ({spec.names[0]})? Pass the right file with --archive {spec.key}=PATH"
    )


@dataclass
class Snippet:
    """One output clip: the labelled frame's snippet."""

    split: str
    name: str  # <city>_<seq>_<labelled frame>
    label: Path
    frames: list[Path]  # source frames in the work folder, in time order


def plan_snippets(gt: Path, seq: Path, notes: list[str]) -> list[Snippet]:
    """One snippet per train/val ``*_labelIds.png`` (frames not checked here)."""
    out = []
    for split in SPLITS:
        for label in sorted((gt / split).glob("*/*_gtFine_labelIds.png")):
            m = _STEM.match(label.stem)
            start = int(m["frame"]) - LABEL_INDEX if m else -1
            if m is None or start < 0:
                notes.append(f"cityscapes: {label.name} is not <city>_<seq>_<frame>_gtFine_labelIds with "
                             f"frame >= {LABEL_INDEX}; skipped")  # fmt: skip
                continue
            city, seq_no = m["city"], m["seq"]
            frames = [seq / split / label.parent.name / f"{city}_{seq_no}_{k:06d}_leftImg8bit.png"
                      for k in range(start, start + SNIPPET_LEN)]  # fmt: skip
            out.append(Snippet(split, f"{city}_{seq_no}_{m['frame']}", label, frames))
    return out


def _stem(frame: Path) -> str:
    return frame.name.removesuffix("_leftImg8bit.png")


def _targets(out: Path, snippets: list[Snippet]) -> dict[Path, list[Path]]:
    """Source frame -> its places in the output (several when labelled frames are closer than a snippet)."""
    targets: dict[Path, list[Path]] = {}
    for s in snippets:
        for f in s.frames:
            targets.setdefault(f, []).append(out / "data" / s.name / "origin" / f"{_stem(f)}.png")
    return targets


def _frame_job(job: tuple[Path, list[Path], tuple[int, int] | None]) -> None:
    """Worker: one source frame -> its targets: resized, or copied to all but the last and moved there."""
    src, targets, resize_wh = job
    todo = [t for t in targets if not t.is_file()]
    if not todo:
        return
    if resize_wh is not None and src.is_file():
        img = cv2.imread(str(src), cv2.IMREAD_COLOR)
        if img is None:
            raise PrepareError(f"{src}: cannot read this frame (corrupt?); re-download the sequence archive")
        img = cv2.cvtColor(cv2.resize(img, resize_wh, interpolation=cv2.INTER_CUBIC), cv2.COLOR_BGR2RGB)
        for target in todo:
            write_png(target, img)
        src.unlink()  # work/ is ours: free the full-size frame now rather than at the end
        return
    # no resize (or resumed after the source was moved): plain file copies, never re-encoded
    base = src if src.is_file() else next(t for t in targets if t.is_file())
    for target in todo:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target == todo[-1] and base == src:
            os.replace(src, target)  # work/ is ours: the last user of a frame takes the file itself
        else:
            tmp = target.with_name(target.name + ".tmp")
            shutil.copyfile(base, tmp)
            os.replace(tmp, target)


def _label_job(job: tuple[Path, str, Path, Path]) -> dict[str, int]:
    """Worker: labelIds PNG -> raw mask; returns {value: pixels} of the values that are not Cityscapes ids."""
    src, rel, dst, side = job
    if dst.is_file():  # finished by an interrupted run; its unknown values were kept in the side file
        return json.loads(side.read_text()) if side.is_file() else {}
    ids = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if ids is None or ids.ndim != 2 or ids.dtype != np.uint8:
        raise PrepareError(f"{rel}: not a readable single-channel 8-bit labelIds image; re-download gtFine")
    values, counts = np.unique(ids, return_counts=True)
    unknown = {str(v): int(c) for v, c in zip(values, counts, strict=True) if NUM_LABEL_IDS <= v < 255}
    if unknown:
        side.parent.mkdir(parents=True, exist_ok=True)
        side.write_text(json.dumps(unknown))
    write_png(dst, label_lut()[ids])  # last: an existing mask means this label is finished
    return unknown


def build(ctx: BuildContext) -> dict:
    """Fill ``ctx.out`` with one clip per labelled train/val snippet, ``train.txt`` and ``val.txt``."""
    gt_dir, _ = _extract(ctx, GTFINE, _LABEL)
    gt_root = _top(ctx, GTFINE, gt_dir, "gtFine")
    seq_dir, fresh = _extract(ctx, SEQUENCE, _FRAME)
    seq_root = _top(ctx, SEQUENCE, seq_dir, "leftImg8bit_sequence")
    ctx.report.notes.append("cityscapes: the test split has no public labels; skipped")
    snippets = plan_snippets(gt_root, seq_root, ctx.report.notes)
    targets = _targets(ctx.out, snippets)

    def complete(s: Snippet) -> bool:
        return all(f.is_file() or any(t.is_file() for t in targets[f]) for f in s.frames)

    # the snippets complete right after extraction, kept in work/: on a resumed run a frame missing from one
    # of them was lost from the output (extract again), while the others lack frames in the archive itself
    listing = ctx.work / "complete_snippets.json"
    if fresh or not listing.is_file():
        listing.write_text(json.dumps([s.name for s in snippets if complete(s)]))
    names = set(json.loads(listing.read_text()))
    if any(not complete(s) for s in snippets if s.name in names):
        _extract(ctx, SEQUENCE, _FRAME, force=True)
    kept = []
    for s in snippets:
        if s.name in names and complete(s):
            kept.append(s)
            continue
        missing = next((f.name for f in s.frames if not f.is_file()), "?")
        ctx.report.notes.append(f"cityscapes: the snippet of {s.label.name} lacks frames in the sequence "
                                f"archive (e.g. {missing}); skipped")  # fmt: skip
    if not kept:
        raise PrepareError(f"{ctx.archives[GTFINE.key]}: no labelled train/val snippet found; see the notes")

    targets = _targets(ctx.out, kept)  # frames of skipped snippets stay in the work folder
    jobs = [(src, dsts, ctx.resize_wh) for src, dsts in targets.items()]
    parallel_map(_frame_job, jobs, ctx.jobs, "Cityscapes frames", ctx.progress)
    label_jobs = [
        (s.label, s.label.relative_to(gt_dir).as_posix(),
         ctx.out / "data" / s.name / "mask" / f"{s.name}.png", ctx.work / "unknown" / f"{s.name}.json")
        for s in kept
    ]  # fmt: skip
    unknowns = parallel_map(_label_job, label_jobs, ctx.jobs, "Cityscapes labels", ctx.progress)
    for (_, rel, _, _), unknown in zip(label_jobs, unknowns, strict=True):
        ctx.report.unknown(rel, {f"id {v}": n for v, n in unknown.items()})  # ids, not colours: say so
    train = [s.name for s in kept if s.split == "train"]
    val = [s.name for s in kept if s.split == "val"]
    write_splits(ctx.out, train, val)
    return {"train_clips": len(train), "val_clips": len(val), "skipped_snippets": len(snippets) - len(kept),
            "snippet_len": SNIPPET_LEN, "label_index": LABEL_INDEX}  # fmt: skip


CONVERTER = Converter(name="cityscapes", folder="cityscapes", archives=(SEQUENCE, GTFINE), build=build)
