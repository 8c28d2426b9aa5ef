"""UAVid v1.5 + VDD converter: the official archives -> prepared clips (``ssp.md`` §7.1, §7.4-7.5).

Accepted archive layouts (the enclosing folders are found by walking the extracted tree, not hard-coded)::

    uavid_v1.5_official_release.zip   .../uavid_train|uavid_val/<seq>/images.mp4
                                      .../uavid_train|uavid_val/<seq>/Labels/%06d.png     RGB, UAVid colours
    VDD annotation of UAVid (*.zip)   .../UAVid7/uavid_train|uavid_val/<seq>/VDD_Labels/%06d.png   VDD ids

Only these members are extracted (not ``uavid_test``, not the ``Images/`` copies). Steps, as the reference:
every frame of ``images.mp4`` is extracted (``--resize`` W x H, bicubic); a label ``%06d.png`` belongs to the
frame with that number. Masks are built at the label's own resolution by exact colour match, then VDD roof
(id 5) replaces building and VDD water (id 6) replaces clutter, nowhere else. Per sequence frame 0 is dropped,
the rest is cut into chunks of ``CLIP_LEN`` and chunks shorter than ``MIN_CLIP_LEN`` are dropped, so each clip
ends on a labelled frame. Clips are named ``<global:03d>_<seq>_<local:02d>`` (sequences in natural order:
seq1, seq2, ..., seq10) and go to ``val.txt`` when the sequence is one of ``VAL_SEQS``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from data.catalog import UAVID
from data.prepare.common import (
    ArchiveSpec,
    BuildContext,
    Converter,
    PrepareError,
    Report,
    extract_frames,
    move_file,
    natural_key,
    parallel_map,
    read_rgb,
    rgb_to_raw,
    safe_extract,
    write_png,
    write_splits,
)

CLIP_LEN = 100  # frames per clip; UAVid labels every 100th frame, so each clip ends on its label
MIN_CLIP_LEN = 50  # a shorter trailing chunk is dropped
VAL_SEQS = frozenset({"seq16", "seq17", "seq18", "seq19", "seq20", "seq36", "seq37"})  # official UAVid val
SPLIT_DIRS = ("uavid_train", "uavid_val")
VDD_ROOF, VDD_WATER = 5, 6  # VDD ids used for the overlay
RAW_CLUTTER, RAW_WATER, RAW_BUILDING, RAW_ROOF = 0, 6, 7, 8  # raw mask values (catalog UAVID, id + 1)

UAVID_ARCHIVE = ArchiveSpec(
    key="uavid",
    names=("uavid_v1.5_official_release.zip", "uavid_v1.5_official_release_image.zip"),
    what="UAVid v1.5 'semantic labelling with video support' release (uavid.nl, Download)",
)
VDD_ARCHIVE = ArchiveSpec(
    key="vdd",
    names=("vdd_uavid*.zip", "*VDD*UAVid*.zip", "*UAVid*VDD*.zip", "*UAVid7*.zip"),
    what="the VDD annotation of UAVid with roof and water (VDD project page; it unpacks to UAVid7/)",
)


def _tail(name: str) -> tuple[str, ...] | None:
    """The path parts below ``uavid_train|uavid_val/<seq>/`` of an archive member, or None."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if "__MACOSX" in parts or not parts or parts[-1].startswith("._"):
        return None
    for i, part in enumerate(parts[:-2]):
        if part in SPLIT_DIRS:
            return parts[i + 2 :]
    return None


def uavid_member(name: str) -> bool:
    """Members of the UAVid archive the converter needs: each sequence's video and RGB labels."""
    tail = _tail(name)
    return tail == ("images.mp4",) or (tail is not None and len(tail) == 2 and tail[0] == "Labels"
                                       and tail[1].lower().endswith(".png"))  # fmt: skip


def vdd_member(name: str) -> bool:
    """Members of the VDD archive the converter needs: the VDD id labels of the UAVid sequences."""
    tail = _tail(name)
    return (
        tail is not None and len(tail) == 2 and tail[0] == "VDD_Labels" and tail[1].lower().endswith(".png")
    )


@dataclass
class Sequence:
    """One UAVid sequence after extraction."""

    name: str
    split_dir: str  # the folder it came from: uavid_train or uavid_val
    video: Path
    labels: dict[int, Path]  # frame number -> RGB label
    vdd: Path | None = None  # its VDD_Labels folder
    frames: int = 0  # extracted frame count

    @property
    def split(self) -> str:
        return "val" if self.name in VAL_SEQS else "train"


@dataclass
class ClipPlan:
    """One output clip: consecutive frame numbers of one sequence and its labelled frames."""

    name: str
    seq: Sequence
    frames: range
    labels: list[int] = field(default_factory=list)


def find_sequences(root: Path, archive: Path, notes: list[str]) -> list[Sequence]:
    """Every ``uavid_train|uavid_val/<seq>/images.mp4`` under the extracted ``root``, in natural order."""
    seqs: dict[str, Sequence] = {}
    for video in sorted(root.rglob("images.mp4")):
        seq_dir = video.parent
        if seq_dir.parent.name not in SPLIT_DIRS:
            continue
        if seq_dir.name in seqs:
            raise PrepareError(f"{archive}: sequence {seq_dir.name} appears twice; re-download the archive")
        labels: dict[int, Path] = {}
        for label in sorted((seq_dir / "Labels").glob("*.png")):
            if label.stem.isdigit():
                labels[int(label.stem)] = label
            else:
                notes.append(f"uavid: {label.relative_to(root)} is not named <frame %06d>.png; skipped")
        seqs[seq_dir.name] = Sequence(seq_dir.name, seq_dir.parent.name, video, labels)
    if not seqs:
        raise PrepareError(
            f"{archive}: no uavid_train/<seq>/images.mp4 inside; this converter needs the 'semantic labelling "
            f"with video support' release (uavid_v1.5_official_release.zip)"
        )
    for seq in seqs.values():
        if (seq.split == "val") != (seq.split_dir == "uavid_val"):
            notes.append(
                f"uavid: {seq.name} came from {seq.split_dir} but goes to {seq.split} (split by name)"
            )
    return sorted(seqs.values(), key=lambda s: natural_key(s.name))


def _extract_video(job: tuple[Sequence, Path, tuple[int, int] | None]) -> int:
    """Worker: every frame of one sequence's video into ``dest``; returns the frame count.

    A marker records the count once the video is done, so a resumed run skips videos whose frames were already
    moved into the output."""
    seq, dest, resize_wh = job
    marker = dest.with_name(dest.name + ".frames.json")
    if marker.is_file():
        return json.loads(marker.read_text())["frames"]
    count = len(extract_frames(seq.video, dest, resize_wh=resize_wh))
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"frames": count}))
    os.replace(tmp, marker)
    return count


def plan_clips(seqs: list[Sequence], notes: list[str]) -> list[ClipPlan]:
    """Cut each sequence (frame 0 dropped) into chunks of ``CLIP_LEN``; keep chunks of ``MIN_CLIP_LEN`` or
    more; number the kept clips over all sequences."""
    plans: list[ClipPlan] = []
    for seq in seqs:
        kept = 0
        for local, start in enumerate(range(1, seq.frames, CLIP_LEN)):
            frames = range(start, min(start + CLIP_LEN, seq.frames))
            labels = [f for f in frames if f in seq.labels]
            if len(frames) < MIN_CLIP_LEN:
                if labels:
                    notes.append(f"uavid: {seq.name} frames {frames.start}-{frames.stop - 1} are fewer than "
                                 f"{MIN_CLIP_LEN}: dropped with their label(s) {labels}")  # fmt: skip
                continue
            plans.append(ClipPlan(f"{len(plans):03d}_{seq.name}_{local:02d}", seq, frames, labels))
            kept += 1
        beyond = sorted(f for f in seq.labels if f >= seq.frames)
        if beyond:
            notes.append(
                f"uavid: {seq.name} has labels for frames {beyond} but its video has {seq.frames} frames"
            )
        if not kept:
            notes.append(f"uavid: {seq.name} has {seq.frames} frames, too few for one clip; skipped")
    return plans


def overlay_vdd(raw: np.ndarray, clutter: np.ndarray, vdd: np.ndarray) -> tuple[int, int]:
    """VDD roof onto UAVid building and VDD water onto UAVid clutter, in place; returns (roof, water) pixels.

    ``clutter`` is where the UAVid label is exactly black: pixels zeroed for an unknown colour stay ignore.
    """
    roof = (vdd == VDD_ROOF) & (raw == RAW_BUILDING)
    water = (vdd == VDD_WATER) & clutter
    raw[roof] = RAW_ROOF
    raw[water] = RAW_WATER
    return int(roof.sum()), int(water.sum())


def _read_vdd(path: Path, rel: str, shape: tuple[int, int], notes: list[str]) -> np.ndarray:
    ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if ids is None:
        raise PrepareError(f"{rel}: cannot read this VDD label (corrupt?); re-download the VDD archive")
    if ids.ndim == 3:  # a grey PNG saved as RGB is fine; real colour is not an id image
        if not (ids == ids[..., :1]).all():
            raise PrepareError(
                f"{rel}: expected a single-channel VDD id image, got colour; wrong VDD archive?"
            )
        ids = ids[..., 0]
    if ids.shape != shape:
        notes.append(f"uavid: {rel} is {ids.shape[1]}x{ids.shape[0]}, the UAVid label is {shape[1]}x{shape[0]}: "
                     f"resized (nearest)")  # fmt: skip
        ids = cv2.resize(ids, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return ids


def _convert_label(job: tuple[Path, str, Path | None, str, Path, Path]) -> dict:
    """Worker: RGB label (+ VDD label) -> raw mask at ``dst``.

    Returns {"unknown", "notes", "roof", "water"}, also kept in a side file written before the mask, so a resumed
    run that skips a finished mask still reports what it found."""
    src, rel, vdd, vdd_rel, dst, side = job
    if dst.is_file() and side.is_file():
        return json.loads(side.read_text())
    rgb = read_rgb(src, rel)
    local = Report()  # workers are forked copies: collect here, the parent merges the returned dict
    raw = rgb_to_raw(rgb, UAVID.source_colors, rel, local)
    roof = water = 0
    if vdd is not None:
        ids = _read_vdd(vdd, vdd_rel, raw.shape, local.notes)
        roof, water = overlay_vdd(raw, (rgb == 0).all(axis=-1), ids)
    found = {"unknown": local.unknown_colors, "notes": local.notes, "roof": roof, "water": water}
    side.parent.mkdir(parents=True, exist_ok=True)
    side.write_text(json.dumps(found))
    write_png(dst, raw)  # last: an existing mask (with its side file) means this label is finished
    return found


def _find_vdd(root: Path, seqs: list[Sequence], archive: Path, notes: list[str]) -> None:
    """Attach each sequence's ``VDD_Labels`` folder; sequences without one get a note."""
    folders = {d.parent.name: d for d in sorted(root.rglob("VDD_Labels")) if d.is_dir()}
    if not folders:
        raise PrepareError(
            f"{archive}: no UAVid7/uavid_train|uavid_val/<seq>/VDD_Labels/ inside; is this the VDD annotation "
            f"of UAVid? Pass the right file with --archive vdd=PATH"
        )
    for seq in seqs:
        seq.vdd = folders.get(seq.name)
        if seq.vdd is None:
            notes.append(f"uavid: the VDD archive has no labels for {seq.name}: no roof or water there")


def _extract(ctx: BuildContext, spec: ArchiveSpec, wanted) -> Path:
    """Extract one archive's wanted members into ``work/<key>`` once (a marker skips it when resuming)."""
    dest, marker = ctx.work / spec.key, ctx.work / f"{spec.key}.extracted"
    if not marker.is_file():
        safe_extract(ctx.archives[spec.key], dest, members=wanted, progress=ctx.progress)
        marker.touch()
    return dest


def build(ctx: BuildContext) -> dict:
    """Fill ``ctx.out`` with the UAVid clips, ``train.txt`` and ``val.txt``; returns report entries."""
    notes = ctx.report.notes
    uavid_root = _extract(ctx, UAVID_ARCHIVE, uavid_member)
    vdd_root = _extract(ctx, VDD_ARCHIVE, vdd_member)
    seqs = find_sequences(uavid_root, ctx.archives[UAVID_ARCHIVE.key], notes)
    _find_vdd(vdd_root, seqs, ctx.archives[VDD_ARCHIVE.key], notes)

    frames_dir = ctx.work / "frames"
    jobs = [(s, frames_dir / s.name, ctx.resize_wh) for s in seqs]
    for seq, count in zip(
        seqs, parallel_map(_extract_video, jobs, ctx.jobs, "UAVid frames", ctx.progress), strict=True
    ):
        seq.frames = count
    plans = plan_clips(seqs, notes)
    if not plans:
        raise PrepareError(f"{ctx.archives[UAVID_ARCHIVE.key]}: no clip could be built; see the notes above")
    unlabelled = [p.name for p in plans if not p.labels]
    if unlabelled:  # expected for a video that runs on past its last label (ssp.md §7.5)
        notes.append(f"uavid: {len(unlabelled)} clip(s) have no labelled frame: {', '.join(unlabelled)}")

    for plan in plans:
        for f in plan.frames:
            move_file(
                frames_dir / plan.seq.name / f"{f:06d}.png",
                ctx.out / "data" / plan.name / "origin" / f"{f:06d}.png",
            )
    label_jobs = []
    for plan in plans:
        seq = plan.seq
        for f in plan.labels:
            vdd = seq.vdd / f"{f:06d}.png" if seq.vdd is not None else None
            if vdd is not None and not vdd.is_file():
                notes.append(f"uavid: no VDD label for {seq.name} frame {f:06d}: no roof or water there")
                vdd = None
            label_jobs.append((seq.labels[f], seq.labels[f].relative_to(uavid_root).as_posix(), vdd,
                               vdd.relative_to(vdd_root).as_posix() if vdd else "",
                               ctx.out / "data" / plan.name / "mask" / f"{f:06d}.png",
                               ctx.work / "labels" / seq.name / f"{f:06d}.json"))  # fmt: skip
    roof = water = 0
    for found in parallel_map(_convert_label, label_jobs, ctx.jobs, "UAVid labels", ctx.progress):
        for path, counts in found["unknown"].items():
            ctx.report.unknown(path, counts)
        notes.extend(found["notes"])
        roof, water = roof + found["roof"], water + found["water"]

    write_splits(ctx.out, [p.name for p in plans if p.seq.split == "train"],
                 [p.name for p in plans if p.seq.split == "val"])  # fmt: skip
    per_seq = {s.name: {"split": s.split, "frames": s.frames, "labels": len(s.labels),
                        "clips": sum(p.seq is s for p in plans)} for s in seqs}  # fmt: skip
    return {"sequences": per_seq, "vdd_overlay_pixels": {"roof": roof, "water": water},
            "clip_len": CLIP_LEN, "min_clip_len": MIN_CLIP_LEN}  # fmt: skip


CONVERTER = Converter(name="uavid", folder="UAVid", archives=(UAVID_ARCHIVE, VDD_ARCHIVE), build=build)
