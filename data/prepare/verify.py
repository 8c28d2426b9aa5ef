"""``python -m data.prepare verify ROOT [--dataset NAME]``: re-check a prepared dataset.

Every listed clip is read with the same functions training uses (:mod:`data.frames`): every frame must decode,
every mask must be a single-channel 8-bit image with values inside the class table and a frame of the same stem;
the splits must be consistent (each listed clip exists, no clip in two splits, no duplicates, every clip folder
listed). Problems are printed one per line (the first ``MAX_LINES``) and the command exits with code 2.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

from config.cli import CliParser
from config.errors import DataError
from data.catalog import DATASETS, DatasetInfo, get_dataset_info
from data.frames import read_clip, read_frame, read_mask
from data.prepare.common import PrepareError, parallel_map

MAX_LINES = 20
LISTINGS = ("train", "val", "test")  # test.txt is optional


def user_path(path: Path) -> Path:
    """A path the user typed: relative to the folder ``process_dataset.sh`` was started from (it cd's to the
    repository, and exports that folder as ``TCSEG_CALLER_DIR``), else to the current folder."""
    base = os.environ.get("TCSEG_CALLER_DIR")
    return path if path.is_absolute() or not base else Path(base) / path


def split_problems(root: Path) -> tuple[dict[str, list[str]], list[str]]:
    """({split: clip names, duplicates removed}, problems) for ``root``'s listings and ``data/`` folders."""
    splits: dict[str, list[str]] = {}
    problems: list[str] = []
    for split in LISTINGS:
        listing = root / f"{split}.txt"
        if not listing.is_file():
            if split != "test":
                problems.append(f"{listing}: missing")
            continue
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        repeated = sorted(n for n, k in Counter(names).items() if k > 1)
        if repeated:
            problems.append(f"{listing}: lists {', '.join(repeated[:3])} more than once")
        splits[split] = list(dict.fromkeys(names))
    seen: dict[str, str] = {}
    for split, names in splits.items():
        for name in names:
            if name in seen:
                problems.append(f"clip {name} is in both {seen[name]}.txt and {split}.txt")
            seen.setdefault(name, split)
    data = root / "data"
    folders = {p.name for p in data.iterdir() if p.is_dir()} if data.is_dir() else set()
    problems += [f"{seen[n]}.txt lists {n}, but {data / n} does not exist" for n in seen if n not in folders]
    problems += [f"{data / n}: not listed in any of {', '.join(s + '.txt' for s in splits)}"
                 for n in sorted(folders - set(seen))]  # fmt: skip
    return splits, problems


def check_clip(job: tuple[Path, str, DatasetInfo]) -> dict:
    """Read every frame and mask of one clip; returns {"frames", "labelled", "sizes", "problems"}."""
    clip_dir, name, info = job
    found = {"frames": 0, "labelled": 0, "sizes": [], "problems": []}
    try:
        clip = read_clip(clip_dir, name, info)
    except DataError as err:
        found["problems"].append(str(err))
        return found
    sizes = set()
    for frame in clip.frames:
        try:
            sizes.add(read_frame(frame).shape[:2])
            found["frames"] += 1
        except DataError as err:
            found["problems"].append(str(err))
    if len(sizes) > 1:
        found["problems"].append(f"{clip_dir}: frames of different sizes {sorted(sizes)}")
    for mask in clip.masks.values():
        try:
            read_mask(mask, info)
            found["labelled"] += 1
        except DataError as err:
            found["problems"].append(str(err))
    found["sizes"] = [f"{w}x{h}" for h, w in sorted(sizes)]
    return found


def _dataset_of(root: Path) -> str:
    try:
        name = json.loads((root / "prepare_report.json").read_text()).get("dataset")
        if name in DATASETS:
            return name
    except (OSError, ValueError, AttributeError):
        pass
    for info in DATASETS.values():
        if Path(info.default_root).name.lower() == root.resolve().name.lower():
            return info.name
    raise PrepareError(f"cannot tell which dataset {root} is: add --dataset {'|'.join(DATASETS)}")


def verify_main(argv: list[str]) -> dict:
    """Check the dataset at ``argv[0]``; prints a summary and returns it; problems raise :class:`PrepareError`."""
    p = CliParser(prog="python -m data.prepare verify", description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="prepared dataset folder, e.g. datasets/UAVid")
    p.add_argument("--dataset", choices=sorted(DATASETS), help="its class table (default: from the report)")
    p.add_argument(
        "--jobs", type=int, default=min(8, os.cpu_count() or 1), metavar="N", help="worker processes"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    root = user_path(args.root)
    if not root.is_dir():
        raise PrepareError(f"{root} is not a folder; prepare it with `bash process_dataset.sh` first")
    info = get_dataset_info(args.dataset or _dataset_of(root))
    splits, problems = split_problems(root)
    names = [
        n for n in dict.fromkeys(n for ns in splits.values() for n in ns) if (root / "data" / n).is_dir()
    ]
    jobs = [(root / "data" / n, n, info) for n in names]
    results = dict(
        zip(names, parallel_map(check_clip, jobs, args.jobs, "verify", not args.no_progress), strict=True)
    )
    for r in results.values():
        problems += r["problems"]
    counts = {s: len(ns) for s, ns in splits.items()}
    summary = {
        "root": str(root), "dataset": info.name, "clips": counts,
        "frames": sum(r["frames"] for r in results.values()),
        "labelled_frames": sum(r["labelled"] for r in results.values()),
        "frame_sizes": sorted({s for r in results.values() for s in r["sizes"]}), "problems": problems,
    }  # fmt: skip
    print(f"{root} ({info.name}): {sum(counts.values())} clips ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
          f"{summary['frames']} frames, {summary['labelled_frames']} labelled, frame size "
          f"{', '.join(summary['frame_sizes']) or '-'}: {f'{len(problems)} problem(s)' if problems else 'OK'}")  # fmt: skip
    if problems:
        for line in problems[:MAX_LINES]:
            print(f"  {line}", file=sys.stderr)
        if len(problems) > MAX_LINES:
            print(f"  ... and {len(problems) - MAX_LINES} more", file=sys.stderr)
        raise PrepareError(f"{root}: {len(problems)} problem(s), listed above; re-run the preparation "
                           f"({info.prepare_hint(root)})")  # fmt: skip
    return summary
