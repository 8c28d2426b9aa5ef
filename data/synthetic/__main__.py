"""Command line: ``python -m data.synthetic --out datasets/synthetic [options]`` (see ``--help``)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from config.errors import ConfigError, DataError, run_cli
from data.synthetic import io
from data.synthetic.generate import generate, same_params
from data.synthetic.params import GENERATOR_VERSION, SyntheticParams


def build_parser() -> argparse.ArgumentParser:
    d = SyntheticParams()
    p = argparse.ArgumentParser(
        prog="python -m data.synthetic",
        description="Generate the embedded synthetic aerial video set (UAVid-like layout: train.txt, val.txt, "
        "data/<clip>/{origin,mask,flow}/, homographies.npy, synthetic_meta.json). Output is byte-identical for "
        "the same parameters, whatever --workers.",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="dataset folder to create (e.g. datasets/synthetic)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument(
        "--height",
        type=int,
        default=d.height,
        help=f"frame height in px; use multiples of 32 for Hiera (default {d.height})",
    )
    p.add_argument(
        "--width",
        type=int,
        default=d.width,
        help=f"frame width in px; use multiples of 32 for Hiera (default {d.width})",
    )
    p.add_argument(
        "--train-videos",
        type=int,
        default=d.train_videos,
        help=f"training videos, one world each (default {d.train_videos})",
    )
    p.add_argument(
        "--val-videos",
        type=int,
        default=d.val_videos,
        help=f"validation videos, one world each (default {d.val_videos})",
    )
    p.add_argument(
        "--clips-per-video",
        type=int,
        default=d.clips_per_video,
        help=f"consecutive clips cut from each flight (default {d.clips_per_video})",
    )
    p.add_argument(
        "--val-clips-per-video",
        type=int,
        default=None,
        help="clips per validation flight, if it should differ from --clips-per-video",
    )
    p.add_argument(
        "--train-clip-len",
        type=int,
        default=d.train_clip_len,
        help=f"frames per train clip; only the last is labelled (default {d.train_clip_len})",
    )
    p.add_argument(
        "--val-clip-len",
        type=int,
        default=d.val_clip_len,
        help=f"frames per val clip; all are labelled (default {d.val_clip_len})",
    )
    p.add_argument(
        "--workers", type=int, default=2, help="worker processes; does not change the output (default 2)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing set made with other parameters")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    params = dataclasses.replace(
        SyntheticParams(),
        seed=args.seed, height=args.height, width=args.width, train_videos=args.train_videos,
        val_videos=args.val_videos, clips_per_video=args.clips_per_video,
        val_clips_per_video=args.val_clips_per_video, train_clip_len=args.train_clip_len,
        val_clip_len=args.val_clip_len,
    )  # fmt: skip
    params.validate()
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    meta = io.read_meta(args.out) if args.out.is_dir() else None
    if meta is not None and not args.force:
        if same_params(meta, params):
            print(f"{args.out}: a complete synthetic set with these parameters exists; leaving it alone")
            return
        old = meta.get("params", {})
        diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in params.to_json().items() if old.get(k) != v]
        if meta.get("version") != GENERATOR_VERSION:
            diff.append(f"generator version {meta.get('version')!r} -> {GENERATOR_VERSION}")
        raise DataError(
            f"{args.out}: holds a synthetic set made differently ({'; '.join(diff)}); "
            "add --force to replace it, or choose another --out"
        )
    start = time.perf_counter()
    generate(args.out, params, workers=args.workers, progress=not args.quiet)
    print(f"{args.out}: generated in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    run_cli(main)
