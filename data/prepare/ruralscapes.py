"""RuralScapes converter: ``Ruralscapes.zip`` -> prepared clips (``ssp.md`` §7.2-7.6).

Accepted archive layout (the official download; one enclosing folder such as ``Ruralscapes/`` is allowed)::

    [Ruralscapes/]videos/<video>.mp4                        any case of the extension (the download has .MP4)
    [Ruralscapes/]labels/manual_labels/<video>/<name>.png   RGB labels in ``RURALSCAPES.source_colors``

A label's video frame number is the trailing number of its file name: ``segfull_DJI_0043_50.png`` (the
download's unpadded form), ``segfull_DJI_0043_000050.png`` and ``000050.png`` are all frame 50. A name without
a trailing number, or a second name for the same frame, is reported in the notes and skipped. Nothing else of
the archive is extracted (macOS ``__MACOSX/`` and ``._*`` resource files included).

Steps (as the reference): every ``FRAME_EVERY``-th frame plus the last is extracted as
``segfull_<video>_%06d.png`` (original frame number); a label must sit on an extracted frame (else it is
reported and skipped); per video the first and last frame and the first and last label are dropped; the sorted
frames are cut into clips of ``CLIP_LEN``; clips without a mask or shorter than ``MIN_CLIP_LEN`` are dropped;
the labels of the kept clips are converted by exact colour. Clip names are
``<global:03d>_<video>_<local:02d>``: ``global`` counts the kept clips over all videos (sorted by name),
``local`` is the clip's chunk position in its video (a dropped chunk leaves a gap, and the name still says
where in the video the clip lies).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from data.catalog import RURALSCAPES
from data.prepare.common import (
    ArchiveSpec,
    BuildContext,
    Converter,
    DamagedArchive,
    PrepareError,
    Report,
    extract_frames,
    move_file,
    parallel_map,
    read_rgb,
    rgb_to_raw,
    safe_extract,
    write_png,
    write_splits,
)

FRAME_EVERY = 5  # 50 fps videos -> 10 fps clips
CLIP_LEN = 50
MIN_CLIP_LEN = 10
VAL_VIDEOS = frozenset({"DJI_0051", "DJI_0056", "DJI_0061", "DJI_0086", "DJI_0088", "DJI_0089", "DJI_0116"})

ARCHIVE = ArchiveSpec(
    key="ruralscapes",
    names=("Ruralscapes.zip",),
    what="RuralScapes videos and manual labels (Ruralscapes.zip, from the RuralScapes/SegProp project page)",
)

_VIDEO = re.compile(r"(?:^|/)videos/[^/]+\.mp4$", re.IGNORECASE)
_LABEL = re.compile(r"(?:^|/)labels/manual_labels/[^/]+/[^/]+\.png$", re.IGNORECASE)
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def wanted_member(name: str) -> bool:
    """Archive members the converter needs: the videos and the manual labels, no macOS resource forks."""
    name = name.replace("\\", "/")
    if "__MACOSX/" in name or name.rsplit("/", 1)[-1].startswith("._"):
        return False
    return bool(_VIDEO.search(name) or _LABEL.search(name))


def frame_number(path: Path) -> int | None:
    """The video frame number at the end of a file stem, ``None`` when the stem does not end in digits."""
    m = _TRAILING_NUMBER.search(path.stem)
    return int(m.group(1)) if m else None


def frame_stem(video: str, number: int) -> str:
    """Stem of an extracted frame and of its mask: ``segfull_<video>_%06d`` (the reference naming)."""
    return f"segfull_{video}_{number:06d}"


@dataclass
class ClipPlan:
    """One output clip: its frame numbers (sorted) and the label file of each labelled frame."""

    name: str
    video: str
    frames: list[int]
    labels: dict[int, Path] = field(default_factory=dict)


def plan_video(video: str, frames: list[int], labels: dict[int, Path], notes: list[str]) -> list[ClipPlan]:
    """Cut one video's extracted frames into clips (names get their global index later: ``name`` = local)."""
    extracted = set(frames)
    frames = sorted(frames)[1:-1]  # the reference drops the first and the last image ...
    kept = set(frames)
    used: dict[int, Path] = {}
    for number in sorted(labels)[1:-1]:  # ... and the first and the last label
        if number not in extracted:
            notes.append(
                f"ruralscapes: label {labels[number].name} is for frame {number} of {video}, which is not an "
                f"extracted frame (one in {FRAME_EVERY}, and the last); skipped"
            )
        elif number in kept:
            used[number] = labels[number]
    plans = []
    for local, start in enumerate(range(0, len(frames), CLIP_LEN)):
        chunk = frames[start : start + CLIP_LEN]
        masks = {n: used[n] for n in chunk if n in used}
        if masks and len(chunk) >= MIN_CLIP_LEN:
            plans.append(ClipPlan(name=f"{local:02d}", video=video, frames=chunk, labels=masks))
    return plans


def _find_root(src: Path, archive: Path) -> Path:
    """The folder holding ``videos/`` (the archive's top level or one folder below it)."""
    for root in (src, *sorted(p for p in src.iterdir() if p.is_dir())):
        if (root / "videos").is_dir():
            return root
    raise PrepareError(
        f"{archive}: no videos/*.mp4 inside; is this the RuralScapes download (Ruralscapes.zip)? "
        f"Re-download it or pass the right file with --archive {ARCHIVE.key}=PATH"
    )


def _find_labels(root: Path, video: str, notes: list[str]) -> dict[int, Path]:
    """Frame number -> label file for one video; unparsable and duplicate names go to the notes."""
    labels: dict[int, Path] = {}
    folder = root / "labels" / "manual_labels" / video
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png") if folder.is_dir() else []:
        number = frame_number(path)
        if number is None or number in labels:
            why = "has no trailing frame number" if number is None else f"repeats frame {number}"
            notes.append(f"ruralscapes: label {path.relative_to(root)} {why}; skipped")
            continue
        labels[number] = path
    return labels


def _extract_video(job: tuple[Path, Path, tuple[int, int] | None, bool]) -> list[int]:
    """Worker: extract one video's frames into ``dest``; returns the frame numbers.

    A marker file lists them once the video is done, so a resumed run skips videos whose frames were already
    moved into the output (``force`` ignores the marker when some of them went missing)."""
    video, dest, resize_wh, force = job
    marker = dest.with_name(dest.name + ".frames.json")
    if marker.is_file() and not force:
        return json.loads(marker.read_text())
    paths = extract_frames(video, dest, every=FRAME_EVERY, include_last=True, resize_wh=resize_wh,
                           name=partial(frame_stem, video.stem))  # fmt: skip
    numbers = [frame_number(p) for p in paths]
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(numbers))
    os.replace(tmp, marker)
    return numbers


def _convert_label(job: tuple[Path, str, Path, Path]) -> dict[str, dict[str, int]]:
    """Worker: RGB label -> raw mask at ``dst``; returns its unknown colours (also kept in a side file, so a
    resumed run that skips the finished mask still reports them)."""
    src, rel, dst, side = job
    if dst.is_file():
        return json.loads(side.read_text()) if side.is_file() else {}
    local = Report()  # a worker cannot add to the parent's report: collect here, merge in the parent
    raw = rgb_to_raw(read_rgb(src, rel), RURALSCAPES.source_colors, rel, local)
    if local.unknown_colors:
        side.parent.mkdir(parents=True, exist_ok=True)
        side.write_text(json.dumps(local.unknown_colors))
    write_png(dst, raw)  # last: an existing mask means this label is finished
    return local.unknown_colors


def _extract_archive(ctx: BuildContext) -> Path:
    """Extract videos and labels once (a marker skips it on a resumed run); returns the extraction folder."""
    archive = ctx.archives[ARCHIVE.key]
    src, marker = ctx.work / ARCHIVE.key, ctx.work / f"{ARCHIVE.key}.extracted"
    if not marker.is_file():
        try:
            safe_extract(archive, src, members=wanted_member, progress=ctx.progress)
        except DamagedArchive as err:
            # the reference README warns that this download often arrives damaged: say so (only then)
            raise DamagedArchive(
                f"{err} (the RuralScapes download often arrives damaged: compare its size with the website's)"
            ) from err
        marker.touch()
    return src


def build(ctx: BuildContext) -> dict:
    """Fill ``ctx.out`` with the RuralScapes clips, ``train.txt`` and ``val.txt``; returns report entries."""
    archive = ctx.archives[ARCHIVE.key]
    root = _find_root(_extract_archive(ctx), archive)
    videos = sorted((p for p in (root / "videos").iterdir() if wanted_member(f"videos/{p.name}")),
                    key=lambda p: p.stem)  # fmt: skip
    if not videos:
        raise PrepareError(f"{archive}: {root / 'videos'} holds no .mp4 video; re-download Ruralscapes.zip")
    label_dir = root / "labels" / "manual_labels"
    folders = {p.name for p in label_dir.iterdir() if p.is_dir()} if label_dir.is_dir() else set()
    for extra in sorted(folders - {v.stem for v in videos}):
        ctx.report.notes.append(f"ruralscapes: labels/manual_labels/{extra} has no video; skipped")

    frames_dir = ctx.work / "frames"
    jobs = [(v, frames_dir / v.stem, ctx.resize_wh, False) for v in videos]
    numbers = parallel_map(_extract_video, jobs, ctx.jobs, "RuralScapes frames", ctx.progress)

    plans: list[ClipPlan] = []
    per_video: dict[str, dict] = {}
    for video, frames in zip(videos, numbers, strict=True):
        labels = _find_labels(root, video.stem, ctx.report.notes)
        if not labels:
            ctx.report.notes.append(f"ruralscapes: video {video.name} has no manual labels; no clip from it")
        clips = plan_video(video.stem, frames, labels, ctx.report.notes)
        per_video[video.stem] = {"frames": len(frames), "labels": len(labels), "clips": len(clips)}
        plans += clips
    if not plans:
        raise PrepareError(f"{archive}: no clip with a label could be built; see the notes above")
    for i, plan in enumerate(plans):
        plan.name = f"{i:03d}_{plan.video}_{plan.name}"

    _move_frames(ctx, plans, videos)
    label_jobs = []
    for plan in plans:
        for n, src in sorted(plan.labels.items()):
            stem = frame_stem(plan.video, n)
            mask = ctx.out / "data" / plan.name / "mask" / f"{stem}.png"
            rel = src.relative_to(
                ctx.work / ARCHIVE.key
            ).as_posix()  # as in the archive: what the user can look up
            label_jobs.append((src, rel, mask, ctx.work / "unknown" / f"{stem}.json"))
    for unknown in parallel_map(_convert_label, label_jobs, ctx.jobs, "RuralScapes labels", ctx.progress):
        for file, counts in unknown.items():
            ctx.report.unknown(file, counts)

    train = [p.name for p in plans if p.video not in VAL_VIDEOS]
    val = [p.name for p in plans if p.video in VAL_VIDEOS]
    write_splits(ctx.out, train, val)
    return {"videos": per_video, "train_clips": len(train), "val_clips": len(val), "frame_every": FRAME_EVERY,
            "clip_len": CLIP_LEN, "min_clip_len": MIN_CLIP_LEN}  # fmt: skip


def _move_frames(ctx: BuildContext, plans: list[ClipPlan], videos: list[Path]) -> None:
    """Move the clip frames from the work folder into ``ctx.out`` (each frame belongs to one clip).

    A frame already at its target was moved by an interrupted run; one missing in both places (the output was
    cleared but the work folder kept) makes that video be extracted again."""
    by_name = {v.stem: v for v in videos}
    moves = [(ctx.work / "frames" / p.video / f"{frame_stem(p.video, n)}.png",
              ctx.out / "data" / p.name / "origin" / f"{frame_stem(p.video, n)}.png", p.video)
             for p in plans for n in p.frames]  # fmt: skip
    lost = sorted({video for src, dst, video in moves if not src.is_file() and not dst.is_file()})
    if lost:
        jobs = [(by_name[v], ctx.work / "frames" / v, ctx.resize_wh, True) for v in lost]
        parallel_map(_extract_video, jobs, ctx.jobs, "RuralScapes frames (again)", ctx.progress)
    for src, dst, _ in moves:
        move_file(src, dst)


CONVERTER = Converter(name="ruralscapes", folder="ruralscapes", archives=(ARCHIVE,), build=build)
