"""Command line: ``python -m data.synthetic --out datasets/synthetic [options]`` (see ``--help``)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from config.cli import CliParser
from config.errors import ConfigError, DataError, run_cli
from data.synthetic import io
from data.synthetic.generate import generate, same_params
from data.synthetic.params import GENERATOR_VERSION, SyntheticParams

# (flag, SyntheticParams field, help); the default shown comes from SyntheticParams.
_INT_OPTIONS = (
    ("--seed", "seed", "random seed"),
    ("--height", "height", "frame height in px; use multiples of 32 for Hiera"),
    ("--width", "width", "frame width in px; use multiples of 32 for Hiera"),
    ("--train-videos", "train_videos", "training videos, one world each"),
    ("--val-videos", "val_videos", "validation videos, one world each"),
    ("--clips-per-video", "clips_per_video", "consecutive clips cut from each flight"),
    (
        "--val-clips-per-video",
        "val_clips_per_video",
        "clips per validation flight (default: --clips-per-video)",
    ),
    ("--train-clip-len", "train_clip_len", "frames per train clip; only the last is labelled"),
    ("--val-clip-len", "val_clip_len", "frames per val clip; all are labelled"),
)


def build_parser() -> argparse.ArgumentParser:
    d = SyntheticParams()
    p = CliParser(
        prog="python -m data.synthetic",
        description="Generate the embedded synthetic aerial video set (UAVid-like layout: train.txt, val.txt, "
        "data/<clip>/{origin,mask,flow}/, homographies.npy, synthetic_meta.json). Output is byte-identical for "
        "the same parameters, whatever --workers.",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="dataset folder to create (e.g. datasets/synthetic)"
    )
    for flag, name, text in _INT_OPTIONS:
        default = getattr(d, name)
        p.add_argument(flag, dest=name, type=int, default=default,
                       help=text if default is None else f"{text} (default {default})")  # fmt: skip
    p.add_argument(
        "--workers", type=int, default=2, help="worker processes; does not change the output (default 2)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing set made with other parameters "
                   "(only the generator's files: files you added there are kept)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    params = dataclasses.replace(
        SyntheticParams(), **{name: getattr(args, name) for _, name, _ in _INT_OPTIONS}
    )
    params.validate()
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    meta = io.read_meta(args.out) if args.out.is_dir() else None
    if meta is not None and not args.force:
        if same_params(meta, params):
            print(f"{args.out}: a complete synthetic set with these parameters exists; leaving it alone: "
                  f"{summary(params)}")  # fmt: skip
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
    kept = generate(args.out, params, workers=args.workers, progress=not args.quiet)
    if kept:  # --force replaced only what the generator wrote
        shown = ", ".join(str(p) for p in kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
        print(f"{args.out}: kept {len(kept)} file(s) the generator did not write: {shown}")
    print(f"{args.out}: generated in {time.perf_counter() - start:.1f} s: {summary(params)}")


def summary(params: SyntheticParams) -> str:
    """What the set holds for training: the number that bounds ``training_cfg.batch_size``."""
    n, val = params.train_samples, params.val_videos * params.clips_per("val")
    return (
        f"{n} train clips, i.e. {n} labelled training samples for image and video training (one step takes "
        f"training_cfg.batch_size x grad_accum_steps x processes of them; --train-videos gives more), {val} val "
        f"clips of {params.val_clip_len} frames, all labelled"
    )


if __name__ == "__main__":
    run_cli(main)
