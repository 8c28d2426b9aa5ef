"""Precompute optical flow for training: ``python -m data.flow_cache CONFIG [--flow dis] [--frames labelled|all]``.

For every training frame ``t`` of the config's dataset that has a next frame (the labelled frames by default,
as the flow-consistency recipe uses them: ``other_methods.md`` §1.1), the forward flow ``t -> t+1`` at the
config's ``crop_size`` (or ``--size HxW``) is computed with a provider of the flow registry (``raft_large`` /
``raft_small`` with local weights, ``dis`` or ``farneback`` on the CPU, ``gt`` on the synthetic set) and stored
in the one pair cache (:class:`models.flow.cache.CachedFlow`, keyed by the frames and the settings) that training
reads. A rerun skips what is stored, so an interrupted run resumes; the command reports what it computed, what it
reused and the disk used, and writes pictures of the first flows and of where the flow-consistency loss acts on
them (``--preview N``). Rows to be ignored (the ego-vehicle's hood) are masked where the flow is read
(:func:`training.fcl.mask_bottom_rows`), so one cache serves any mask.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from config.cli import CliParser, at_least
from config.errors import ConfigError, run_cli
from config.files import atomic_path
from config.loader import load
from data.frames import FramePair, open_split, read_frame
from data.transforms import resize_frame
from eval.vis.flow import flow_to_rgb, weight_to_rgb
from models.flow import build_flow
from models.flow.cache import CachedFlow
from training.fcl import FlowConsistencyLoss

FLOWS = ("raft_large", "raft_small", "dis", "farneback", "gt")


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m data.flow_cache", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="config name in config/<kind>/ or a path (its data_cfg names the dataset)")
    p.add_argument(
        "--kind", default="image", choices=["image", "video"], help="where a bare config name lives"
    )
    p.add_argument(
        "--flow", default="dis", choices=FLOWS, help="flow provider (default dis, CPU, weight-free)"
    )
    p.add_argument("--weights", default=None, help="RAFT: local weights file (default: the provider's)")
    p.add_argument("--iters", type=at_least(1), default=20, help="RAFT refinement iterations")
    p.add_argument(
        "--size", default=None, metavar="HxW", help="flow resolution (default: the config's crop_size)"
    )
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--frames", default="labelled", choices=["labelled", "all"],
                   help="the frames t whose flow t -> t+1 is stored")  # fmt: skip
    p.add_argument("--cache-dir", default="datasets/.cache", help="root of the pair caches")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preview", type=at_least(0), default=4,
                   help="write the flow and the FCL weight map (final preset) of the first N pairs as PNGs")  # fmt: skip
    return p


def write_previews(cache: CachedFlow, pairs: list[FramePair], size: tuple[int, int], n: int) -> list[Path]:
    """``<cache folder>/preview/<clip>_<stem>_{flow,fcl_weight}.png`` for the first ``n`` pairs (read back from the
    cache): the flow's colour wheel and where the reference's final FCL acts."""
    fcl = FlowConsistencyLoss.preset("final")
    out = []
    folder = cache.store.root / cache.store.name / "preview"
    folder.mkdir(parents=True, exist_ok=True)
    for pair in pairs[:n]:
        flow = cache.store.load(cache.key(pair, size))
        weight = fcl.weight_map(torch.from_numpy(np.asarray(flow, np.float32))[None])[0, 0].numpy()
        stem = f"{pair.first_path.parent.parent.name}_{pair.first_path.stem}"
        for name, rgb in (("flow", flow_to_rgb(flow)), ("fcl_weight", weight_to_rgb(weight))):
            path = folder / f"{stem}_{name}.png"
            with atomic_path(path) as tmp:
                cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tofile(str(tmp))
            out.append(path)
    return out


def parse_size(text: str | None, default: list[int]) -> tuple[int, int]:
    if text is None:
        return int(default[0]), int(default[1])
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size: expected HxW such as 512x1024, got '{text}'") from None
    if h < 8 or w < 8:
        raise ConfigError(f"--size {text}: both sides must be at least 8 pixels")
    return h, w


def flow_pairs(clips: list, frames: str) -> list[FramePair]:
    """``t -> t+1`` for the chosen frames ``t`` of every clip that have a next frame."""
    out = []
    for clip in clips:
        starts = clip.labelled if frames == "labelled" else range(len(clip))
        out += [clip.pair(t, t + 1) for t in starts if t + 1 < len(clip)]
    return out


def _rgb01(path: object, size: tuple[int, int]) -> torch.Tensor:
    return torch.from_numpy(resize_frame(read_frame(path), size)).permute(2, 0, 1)[None].float() / 255.0


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = load(args.config, args.kind)
    size = parse_size(args.size, cfg.data_cfg.crop_size)
    clips = open_split(cfg.data_cfg, args.split)[2]
    pairs = flow_pairs(clips, args.frames)
    if not pairs:
        raise ConfigError(
            f"{args.config}: no {args.frames} {args.split} frame has a next frame to compute flow to"
        )
    provider = build_flow(
        args.flow, args.weights, args.iters, device=args.device, weights_setting="--weights"
    )
    cache = CachedFlow(provider, args.cache_dir)
    t0, computed = time.time(), 0
    for pair in tqdm(pairs, desc=f"flow {args.flow} {size[0]}x{size[1]}", disable=not sys.stderr.isatty()):
        if cache.store.load(cache.key(pair, size)) is not None:
            continue  # stored by an earlier run: resume
        a, b = _rgb01(pair.first_path, size), _rgb01(pair.second_path, size)
        cache(a.to(args.device), b.to(args.device), [pair])
        computed += 1
    previews = write_previews(cache, pairs, size, args.preview)
    report = {"previews": [str(p) for p in previews], "pairs": len(pairs), "computed": computed, "reused": len(pairs) - computed,
              "disk_mb": round(cache.store.disk_bytes() / 2**20, 2), "folder": str(cache.store.root / cache.store.name),
              "seconds": round(time.time() - t0, 1), "settings": cache.settings(), "size": list(size)}  # fmt: skip
    print(f"== flow cache {report['folder']}: {len(pairs)} pairs ({computed} computed, {report['reused']} reused), "
          f"{report['disk_mb']} MB on disk, {report['seconds']} s")  # fmt: skip
    return report


if __name__ == "__main__":
    run_cli(main)
