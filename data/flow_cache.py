"""Precompute optical flow for training: ``python -m data.flow_cache CONFIG [--flow dis] [--pool annotated|all]``.

For every unlabelled training frame ``t`` of the config that has a partner ``t + offset`` in its clip (the pool of
semi-supervised training, :mod:`data.unlabelled`), the flow ``t -> t + offset`` at the config's ``crop_size`` (or
``--size HxW``) is computed with a provider of the flow registry (``raft_large`` / ``raft_small`` with local
weights, ``dis`` or ``farneback`` on the CPU, ``gt`` on the synthetic set) and stored in the one pair cache
(:class:`models.flow.cache.CachedFlow`, keyed by the frames and the settings) that training reads. The settings
default to the config's ``semi_cfg.flow`` and ``semi_cfg.pool`` (flags override them), so the cache holds exactly
what its training reads. A rerun skips what is stored, so an interrupted run resumes; the command reports what it
computed, what it reused and the disk used, and writes pictures of the first flows and of where the
flow-consistency loss (the config's ``semi_cfg.fcl``, else the final preset) acts on them (``--preview N``). Rows
to be ignored (the ego-vehicle's hood) are masked where the flow is read (``semi_cfg.flow.mask_bottom``), so one
cache serves any mask.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from config.cli import CliParser, at_least
from config.errors import ConfigError, run_cli
from config.loader import load
from data.frames import FramePair, open_split
from data.unlabelled import frame01, partner_pairs
from eval.vis.flow import flow_to_rgb, weight_to_rgb
from eval.vis.render import write_png
from models.flow import build_flow
from models.flow.cache import CachedFlow
from training.fcl import FlowConsistencyLoss

FLOWS = ("raft_large", "raft_small", "dis", "farneback", "gt")
# Without a semi_cfg in the config (and no flag): the recipe's defaults.
DEFAULTS = {"flow": "dis", "weights": None, "iters": 20, "pool": "annotated", "offset": 1,
            "cache_dir": "datasets/.cache"}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m data.flow_cache", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="config name in config/<kind>/ or a path (its data_cfg names the dataset)")
    p.add_argument(
        "--kind", default="image", choices=["image", "video"], help="where a bare config name lives"
    )
    p.add_argument("--flow", default=None, choices=FLOWS,
                   help="flow provider (default: semi_cfg.flow.backend, else dis: CPU, weight-free)")  # fmt: skip
    p.add_argument(
        "--weights", default=None, help="RAFT: local weights file (default: semi_cfg.flow.weights)"
    )
    p.add_argument("--iters", type=at_least(1), default=None, help="RAFT refinement iterations")
    p.add_argument(
        "--size", default=None, metavar="HxW", help="flow resolution (default: the config's crop_size)"
    )
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--pool", default=None, choices=["annotated", "all"],
                   help="the frames t whose flow is stored: the annotated frames or all (default: semi_cfg.pool)")  # fmt: skip
    p.add_argument("--offset", type=int, default=None,
                   help="partner frame t + offset (default: semi_cfg.flow.pair_offset, else 1)")  # fmt: skip
    p.add_argument("--cache-dir", default=None,
                   help="root of the pair caches (default: semi_cfg.flow.cache_dir, else datasets/.cache)")  # fmt: skip
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preview", type=at_least(0), default=4,
                   help="write the flow and the FCL weight map of the first N pairs as PNGs")  # fmt: skip
    return p


def settings(args: argparse.Namespace, cfg: object) -> dict:
    """Each setting from its flag, else the config's ``semi_cfg``, else :data:`DEFAULTS`."""
    semi = getattr(cfg, "semi_cfg", None)
    from_cfg = {} if semi is None else {
        "flow": semi.flow.backend, "weights": semi.flow.weights, "iters": semi.flow.iters, "pool": semi.pool,
        "offset": semi.flow.pair_offset, "cache_dir": semi.flow.cache_dir}  # fmt: skip
    out = {
        k: getattr(args, k) if getattr(args, k) is not None else from_cfg.get(k, v)
        for k, v in DEFAULTS.items()
    }
    if out["cache_dir"] is None:
        raise ConfigError("semi_cfg.flow.cache_dir is null (no cache) in this config; pass --cache-dir DIR")
    if out["offset"] == 0:
        raise ConfigError("--offset 0 pairs a frame with itself; use 1 or -1")
    return out


def write_previews(
    cache: CachedFlow, pairs: list[FramePair], size: tuple[int, int], n: int, fcl: FlowConsistencyLoss
) -> list[Path]:
    """``<cache folder>/preview/<clip>_<stem>_{flow,fcl_weight}.png`` for the first ``n`` pairs (read back from the
    cache): the flow's colour wheel and where ``fcl`` acts."""
    out = []
    folder = cache.store.root / cache.store.name / "preview"
    for pair in pairs[:n]:
        flow = cache.store.load(cache.key(pair, size))
        weight = fcl.weight_map(torch.from_numpy(np.asarray(flow, np.float32))[None])[0, 0].numpy()
        stem = f"{pair.first_path.parent.parent.name}_{pair.first_path.stem}"
        for name, rgb in (("flow", flow_to_rgb(flow)), ("fcl_weight", weight_to_rgb(weight))):
            path = folder / f"{stem}_{name}.png"
            write_png(path, rgb)
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


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = load(args.config, args.kind)
    size = parse_size(args.size, cfg.data_cfg.crop_size)
    s = settings(args, cfg)
    clips = open_split(cfg.data_cfg, args.split)[2]
    pairs = partner_pairs(clips, s["pool"], s["offset"])
    if not pairs:
        raise ConfigError(f"{args.config}: no {s['pool']} {args.split} frame t has a frame t{s['offset']:+d} in its "
                          "clip to compute flow to; try --pool all or --offset -1")  # fmt: skip
    provider = build_flow(
        s["flow"], s["weights"], s["iters"], device=args.device, weights_setting="--weights"
    )
    cache = CachedFlow(provider, s["cache_dir"])
    t0, computed = time.time(), 0
    for pair in tqdm(pairs, desc=f"flow {s['flow']} {size[0]}x{size[1]}", disable=not sys.stderr.isatty()):
        if cache.store.load(cache.key(pair, size)) is not None:
            continue  # stored by an earlier run: resume
        a, b = frame01(pair.first_path, size), frame01(pair.second_path, size)
        cache(a.to(args.device), b.to(args.device), [pair])
        computed += 1
    semi = getattr(cfg, "semi_cfg", None)
    fcl = (
        FlowConsistencyLoss(**semi.fcl.resolved())
        if semi is not None
        else FlowConsistencyLoss.preset("final")
    )
    previews = write_previews(cache, pairs, size, args.preview, fcl)
    report = {"previews": [str(p) for p in previews], "pairs": len(pairs), "computed": computed, "reused": len(pairs) - computed,
              "disk_mb": round(cache.store.disk_bytes() / 2**20, 2), "folder": str(cache.store.root / cache.store.name),
              "seconds": round(time.time() - t0, 1), "settings": cache.settings(), "size": list(size)}  # fmt: skip
    print(f"== flow cache {report['folder']}: {len(pairs)} pairs ({computed} computed, {report['reused']} reused), "
          f"{report['disk_mb']} MB on disk, {report['seconds']} s")  # fmt: skip
    return report


if __name__ == "__main__":
    run_cli(main)
