"""The preparation driver behind ``bash process_dataset.sh`` (``python -m data.prepare``).

For each selected converter: find its archives in ``datasets/`` by their official names (``--archive KEY=PATH``
wins), then build the dataset in ``datasets/.<Folder>.partial/`` (``work/`` for extracted files, ``out/`` for the
layout), write ``prepare_report.json``, rename ``out/`` to ``datasets/<Folder>`` and delete the staging folder.
An interrupted run leaves the staging folder, and running the same command again resumes it; a refused one
(an unsafe, wrong or damaged archive) removes it, lock included. A dataset already prepared from the same inputs
(archive names, sizes and times, ``--resize``, converter version) is left alone; a folder that is not a complete
dataset of ours is never touched. The archives are only read.

``python -m data.prepare verify ROOT`` re-checks a prepared dataset (see :mod:`data.prepare.verify`).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from config.cli import CliParser
from config.errors import UserError
from config.files import acquire_lock, lock_holder, release_lock
from data.catalog import get_dataset_info
from data.prepare import NAMES, converters, get_converter
from data.prepare.common import BuildContext, Converter, PrepareError, Report, parallel_map, remove_tree
from data.prepare.verify import split_problems, user_path, verify_main

PREPARE_VERSION = 1  # the driver's own output format; part of every fingerprint
REPORT_NAME = "prepare_report.json"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w > 0 and h > 0:
            return w, h
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 2560x1440, got '{text}'")


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="process_dataset.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prepare the real datasets from the archives you downloaded into datasets/ (UAVid + VDD, "
        "RuralScapes, Cityscapes sequences).\nSame as: python -m data.prepare [options]",
        epilog="Re-check a prepared dataset: python -m data.prepare verify datasets/UAVid [--dataset uavid]\n"
        "Archive keys for --archive: uavid, vdd, ruralscapes, leftimg8bit_sequence, gtfine.",
    )
    p.add_argument("--only", action="append", choices=NAMES, metavar="NAME",
                   help=f"prepare only this dataset ({'|'.join(NAMES)}; repeatable); default: every dataset "
                        f"whose archives are present")  # fmt: skip
    p.add_argument("--resize", type=_size, metavar="WxH", help="resize extracted video frames (bicubic), e.g. "
                   "2560x1440 as the reference; labels keep their resolution")  # fmt: skip
    p.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                   help="worker processes (default: CPU cores, at most 8)")  # fmt: skip
    p.add_argument("--archive", action="append", default=[], metavar="KEY=PATH",
                   help="use this file for archive KEY (renamed or elsewhere), e.g. vdd=~/Downloads/x.zip")  # fmt: skip
    p.add_argument("--datasets-dir", type=Path, default=None, metavar="DIR", help="where the archives are and the datasets go "
                   "(default: datasets)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="rebuild a dataset prepared from other inputs (the "
                   "old one is replaced only once the new one is complete)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _overrides(items: list[str], known: dict[str, Converter]) -> dict[str, Path]:
    keys = {spec.key for conv in known.values() for spec in conv.archives}
    out = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or key not in keys:
            raise PrepareError(
                f"--archive {item}: expected KEY=PATH with KEY one of {', '.join(sorted(keys))}"
            )
        out[key] = user_path(Path(path).expanduser())
        if not out[key].is_file():
            raise PrepareError(f"--archive {item}: {out[key]} is not a file")
    return out


def locate(conv: Converter, datasets: Path, overrides: dict[str, Path]) -> tuple[dict[str, Path], list[str]]:
    """The archives of ``conv``: (key -> file, one message per missing required archive)."""
    files = sorted(p for p in datasets.iterdir() if p.is_file())
    found, missing = {}, []
    for spec in conv.archives:
        if spec.key in overrides:
            found[spec.key] = overrides[spec.key]
            continue
        for pattern in spec.names:
            hits = [p for p in files if fnmatch.fnmatchcase(p.name.lower(), pattern.lower())]
            if len(hits) > 1:
                raise PrepareError(f"{conv.name}: several files in {datasets} match {pattern} "
                                   f"({', '.join(h.name for h in hits)}); choose one with --archive {spec.key}=PATH")  # fmt: skip
            if hits:
                found[spec.key] = hits[0]
                break
        else:
            if not spec.optional:
                also = f" (or {', '.join(spec.names[1:])})" if len(spec.names) > 1 else ""
                missing.append(f"{datasets / spec.names[0]}{also} not found: {spec.what}; download it into "
                               f"{datasets}/ or pass --archive {spec.key}=PATH")  # fmt: skip
    return found, missing


def fingerprint(conv: Converter, archives: dict[str, Path], resize_wh: tuple[int, int] | None) -> dict:
    """What the prepared dataset depends on; a change means it must be rebuilt."""
    stats = {k: p.stat() for k, p in sorted(archives.items())}
    return {"archives": {k: {"name": archives[k].name, "size": s.st_size, "mtime": int(s.st_mtime)}
                         for k, s in stats.items()},
            "resize": list(resize_wh) if resize_wh else None, "converter": conv.name,
            "converter_version": conv.version, "prepare_version": PREPARE_VERSION}  # fmt: skip


def read_report(folder: Path) -> dict | None:
    """The ``prepare_report.json`` of a complete dataset of ours, else None."""
    try:
        report = json.loads((folder / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and report.get("complete") is True else None


def _plan(
    conv: Converter, datasets: Path, overrides: dict[str, Path], explicit: bool, args
) -> tuple[str, str, dict]:
    """(action, message, inputs): action is "build", "done" or "skip"; refusals raise."""
    out_dir = datasets / conv.folder
    archives, missing = locate(conv, datasets, overrides)
    old = read_report(out_dir)
    if out_dir.is_symlink():
        raise PrepareError(f"{out_dir} is a symbolic link; the preparation renames a finished folder into place, "
                           f"so link datasets/ itself (or use --datasets-dir) to keep the data on another disk")  # fmt: skip
    if missing:
        if old is not None:
            return (
                "done",
                f"{out_dir} is already prepared (its archives are not here, so it was not re-checked)",
                {},
            )
        if explicit:
            raise PrepareError(f"{conv.name}: " + "; ".join(missing))
        names = [m.split(" not found")[0].removeprefix(f"{datasets}/") for m in missing]
        return "skip", f"{' and '.join(names)} not found in {datasets}", {"missing": missing}
    inputs = fingerprint(conv, archives, args.resize)
    inputs_with_paths = {"fingerprint": inputs, "archives": archives}
    if old is not None:
        if old.get("inputs") == inputs:
            partial = datasets / f".{conv.folder}.partial"
            if (
                partial.is_dir() and not (partial / "out").exists()
            ):  # a finished run stopped before cleaning up
                remove_tree(partial)
            return "done", f"{out_dir}: already prepared, nothing to do", {}
        if not args.force:
            changed = [k for k in inputs if (old.get("inputs") or {}).get(k) != inputs[k]]
            raise PrepareError(f"{out_dir} was prepared from other inputs ({', '.join(changed)} changed); add "
                               f"--force to rebuild it (the old one stays until the new one is complete)")  # fmt: skip
    elif out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PrepareError(f"{out_dir} exists but is not a dataset prepared by this tool (no complete {REPORT_NAME});"
                           f" move it away or use another --datasets-dir: it is never overwritten")  # fmt: skip
    return "build", f"from {', '.join(str(p) for p in archives.values())}", inputs_with_paths


def _lock(partial: Path) -> int:
    """Hold an exclusive lock on the staging folder (released when the process ends, even if killed)."""
    fd = acquire_lock(partial / ".lock", fix="use another --datasets-dir")
    if fd is None:
        raise PrepareError(f"{partial} is in use by another preparation (process {lock_holder(partial / '.lock')}); "
                           "wait for it to finish")  # fmt: skip
    return fd


def _mask_hist(path: Path) -> np.ndarray:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2 or raw.dtype != np.uint8:
        raise PrepareError(
            f"{path}: the converter wrote an unreadable or non-8-bit mask (a bug; please report it)"
        )
    return np.bincount(raw.ravel(), minlength=256)


def final_report(conv: Converter, ctx: BuildContext, entries: dict, inputs: dict, seconds: float) -> dict:
    """Scan the built layout: clips, frames, labelled frames, pixels per class; checks it is consistent."""
    info = get_dataset_info(conv.name)
    splits, problems = split_problems(ctx.out)
    if problems or not any(splits.values()):
        raise PrepareError(f"{conv.name}: the built dataset is inconsistent ({(problems or ['no clips'])[0]}); "
                           f"delete {ctx.out.parent} and run again")  # fmt: skip
    frames, labelled, masks = {}, {}, []
    for names in splits.values():
        for name in names:
            frames[name] = sum(1 for _ in (ctx.out / "data" / name / "origin").glob("*.png"))
            clip_masks = sorted((ctx.out / "data" / name / "mask").glob("*.png"))
            labelled[name] = len(clip_masks)
            masks += clip_masks
    hist = sum(
        parallel_map(_mask_hist, masks, ctx.jobs, "count pixels", ctx.progress), np.zeros(256, np.int64)
    )
    if hist[info.num_classes + 1 :].any():
        bad = np.nonzero(hist[info.num_classes + 1 :])[0] + info.num_classes + 1
        raise PrepareError(
            f"{conv.name}: masks hold values {bad.tolist()[:5]} outside the class table (a bug)"
        )
    pixels = {"ignore": int(hist[0]), **{n: int(hist[i + 1]) for i, n in enumerate(info.class_names)}}
    unknown = {}
    for path, counts in ctx.report.unknown_colors.items():
        p = Path(path)
        unknown[
            p.relative_to(ctx.work).as_posix() if p.is_absolute() and p.is_relative_to(ctx.work) else path
        ] = counts
    per_split = {s: {"clips": len(n), "frames": sum(frames[c] for c in n), "labelled_frames": sum(labelled[c] for c in n)}
                 for s, n in splits.items()}  # fmt: skip
    return {
        "complete": True, "dataset": conv.name, "folder": conv.folder, "converter_version": conv.version,
        "prepare_version": PREPARE_VERSION, "inputs": inputs, "seconds": round(seconds, 1),
        "clips": {**{s: v["clips"] for s, v in per_split.items()}, "names": splits},
        "frames": {"total": sum(frames.values()), **{s: v["frames"] for s, v in per_split.items()}},
        "labelled_frames": {"total": sum(labelled.values()), **{s: v["labelled_frames"] for s, v in per_split.items()},
                            "per_clip": labelled},
        "pixels_per_class": pixels, "unknown_colors": unknown, "notes": ctx.report.notes, "converter": entries,
    }  # fmt: skip


def prepare_one(conv: Converter, datasets: Path, plan: dict, args) -> dict:
    """Build one dataset through its staging folder; returns its report.

    A refusal (a :class:`UserError`: an unsafe, wrong or damaged archive, a full disk) deletes the staging folder
    with its lock: nothing in it can be resumed once an input must change. An interruption keeps it for a resume."""
    out_dir, partial = datasets / conv.folder, datasets / f".{conv.folder}.partial"
    partial.mkdir(exist_ok=True)
    fd = _lock(partial)
    try:
        stamp = partial / "inputs.json"
        inputs = plan["fingerprint"]
        try:
            resumed = json.loads(stamp.read_text()) == inputs
        except (OSError, ValueError):  # no stamp, or one cut short by a crash
            resumed = False
        if not resumed:  # a fresh start, or an interrupted run from other inputs: its files cannot be reused
            remove_tree(partial / "work")
            remove_tree(partial / "out")
            stamp.write_text(json.dumps(inputs))
        print(
            f"== {conv.name}: {'resuming in' if resumed else 'building in'} {partial} {'' if resumed else plan['msg']}"
        )
        ctx = BuildContext(archives=plan["archives"], work=partial / "work", out=partial / "out",
                           resize_wh=args.resize, jobs=args.jobs, progress=not args.no_progress, report=Report())  # fmt: skip
        ctx.work.mkdir(exist_ok=True)
        ctx.out.mkdir(exist_ok=True)
        start = time.perf_counter()
        try:
            entries = conv.build(ctx)
            report = final_report(conv, ctx, entries, inputs, time.perf_counter() - start)
        except UserError:
            raise
        except BaseException:
            print(
                f"{conv.name}: stopped; finished work is kept in {partial}: run the same command to resume",
                file=sys.stderr,
            )
            raise
        for tmp in ctx.out.rglob("*.tmp"):  # leftovers of an interrupted write
            tmp.unlink()
        tmp = ctx.out / f"{REPORT_NAME}.tmp"
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, ctx.out / REPORT_NAME)
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        elif out_dir.exists():  # ours, from other inputs, and --force: out of the way only now
            os.replace(out_dir, partial / "replaced")
        os.replace(ctx.out, out_dir)
    except UserError:
        remove_tree(partial)  # still ours: the lock is held until the finally below
        raise
    finally:
        release_lock(fd)
    remove_tree(partial)
    return report


def summary(conv: Converter, report: dict, out_dir: Path) -> str:
    c, f, lab = report["clips"], report["frames"], report["labelled_frames"]
    lines = [f"== {conv.name}: {c.get('train', 0) + c.get('val', 0)} clips ({c.get('train', 0)} train, "
             f"{c.get('val', 0)} val), {f['total']} frames, {lab['total']} labelled frames -> {out_dir} "
             f"({report['seconds'] / 60:.1f} min)"]  # fmt: skip
    if report["unknown_colors"]:
        lines.append(f"   {len(report['unknown_colors'])} label file(s) hold colours outside the table (set to "
                     f"ignore): see unknown_colors in {out_dir / REPORT_NAME}")  # fmt: skip
    lines += [f"   note: {n}" for n in report["notes"][:5]]
    if len(report["notes"]) > 5:
        lines.append(f"   ... {len(report['notes']) - 5} more notes in {out_dir / REPORT_NAME}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Prepare the selected datasets; returns {dataset: "prepared" | "done" | "skip"} (``verify``: its result)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["verify"]:
        return verify_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        raise PrepareError(f"--jobs must be at least 1, got {args.jobs}")
    datasets = user_path(args.datasets_dir) if args.datasets_dir else Path("datasets")
    if not datasets.is_dir():
        raise PrepareError(f"{datasets} is not a folder: create it and put the downloaded archives in it")
    explicit = bool(args.only)
    table = {n: get_converter(n) for n in dict.fromkeys(args.only)} if explicit else converters()
    overrides = _overrides(args.archive, table)
    plans = {}
    for name, conv in table.items():  # every refusal happens before any work starts
        action, msg, extra = _plan(conv, datasets, overrides, explicit, args)
        plans[name] = {"action": action, "msg": msg, **extra}
        if action != "build":
            print(f"== {name}: {'skipped, ' if action == 'skip' else ''}{msg}")
    if not any(p["action"] != "skip" for p in plans.values()):
        raise PrepareError(
            f"no dataset archive found in {datasets}: "
            + " | ".join(f"{n}: {'; '.join(p['missing'])}" for n, p in plans.items())
        )
    status = {}
    for name, plan in plans.items():
        status[name] = plan["action"]
        if plan["action"] == "build":
            report = prepare_one(table[name], datasets, plan, args)
            print(summary(table[name], report, datasets / table[name].folder))
            status[name] = "prepared"
    done = {what: [n for n, s in status.items() if s == key] for key, what in
            (("prepared", "prepared"), ("done", "already prepared"), ("skip", "skipped (archives not found)"))}  # fmt: skip
    print("== " + "; ".join(f"{what}: {', '.join(names)}" for what, names in done.items() if names))
    return status
