"""The inference fast path against the plain model, without a trained run or weight files.

``python -m eval.fast_path_bench [--backbone sam2_hiera_small] [--head-width 256] [--size 256x448] [--threads 1]
[--frames 20] [--runs 3] [--device cpu|cuda] [--out FILE]``

Builds the image model (random weights, trained-looking BatchNorm statistics) and SSP around it, streams the same
frames through the plain and the fast-path copies (batch 1, fp32, precomputed homographies, as the side-by-side
measurement of issue 16), checks that their outputs agree (:data:`models.fast_path.TOLERANCE`), and prints the
FPS of each with the ratio: the speed of the fast path on any machine, for models whose weights are not at hand.
Timing follows ``eval.benchmark`` (warm-up, interleaved timed runs, the median run; CUDA events on a GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from config.cli import CliParser
from config.errors import ConfigError, run_cli
from config.files import atomic_write_text
from eval.evaluate import device_name, label_map, resolve_device, software
from eval.timing import summarise_runs
from models.fast_path import TOLERANCE, FastPath, prepare_inference
from models.image.segmentor import build_segmentor
from models.video.base import StepSide
from models.video.per_frame import PerFrame
from models.video.ssp import SSP


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m eval.fast_path_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="sam2_hiera_small")
    p.add_argument("--head", default="upernet")
    p.add_argument("--head-width", type=int, default=None, help="default: the backbone's reference width")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--size", default="256x448", help="HxW input size")
    p.add_argument("--frames", type=int, default=20, help="timed frames per run")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="CPU torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--out", default=None, help="JSON report (default: checkpoints/fast_path_bench/<...>.json)"
    )
    return p


def _randomise_batchnorms(model: nn.Module) -> None:
    """Trained-looking BatchNorm statistics: fresh ones are the identity, which would make folding look free."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def _stream(model: Any, frames: list[torch.Tensor], h: torch.Tensor) -> Callable[[], list[torch.Tensor]]:
    """A function that streams ``frames`` through ``model`` from a fresh state (the homography ``h`` between
    consecutive frames, given) and returns the label maps, the work of ``metrics.md`` §7 per frame."""

    def run() -> list[torch.Tensor]:
        state, out = model.init_state(), []
        for i, x in enumerate(frames):
            o, state = model.step(x, state, StepSide(homography=h if i else None))
            out.append(label_map(o.logits))
        return out

    return run


def _time(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one call of ``fn``."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _timed_stream(
    model: Any, frames: list[torch.Tensor], h: torch.Tensor, device: torch.device
) -> list[float]:
    """Per-frame milliseconds of streaming ``frames`` through ``model`` from a fresh state (step and argmax)."""
    holder: dict[str, Any] = {"state": model.init_state()}
    out = []
    for i, x in enumerate(frames):
        side = StepSide(homography=h if i else None)

        def one(x: torch.Tensor = x, side: StepSide = side) -> None:
            o, holder["state"] = model.step(x, holder["state"], side)
            label_map(o.logits)

        out.append(_time(one, device))
    return out


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        hh, ww = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {args.size}: expected HxW, e.g. 256x448") from None
    if min(args.frames, args.runs) < 1 or args.warmup < 0:
        raise ConfigError("--frames and --runs must be at least 1, --warmup at least 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    image = build_segmentor(args.backbone, args.head, args.classes, head_width=args.head_width,
                            upsampling="bilinear")  # fmt: skip
    image.check_input_size(hh, ww)
    _randomise_batchnorms(image)
    plain_ssp = SSP(image).to(device).eval()
    _randomise_batchnorms(plain_ssp.sim)
    fast_ssp = copy.deepcopy(plain_ssp)
    fast = prepare_inference(fast_ssp, device, FastPath())
    models = {"image/plain": PerFrame(plain_ssp.image_model).eval(), "image/fast": PerFrame(fast_ssp.image_model).eval(),
              "ssp/plain": plain_ssp, "ssp/fast": fast_ssp}  # fmt: skip
    g = torch.Generator().manual_seed(1)
    frames = [torch.rand(1, 3, hh, ww, generator=g).to(device) for _ in range(args.frames)]
    h = torch.tensor([[[1.0, 0.0, 3.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]]], device=device)
    streams = {name: _stream(m, frames, h) for name, m in models.items()}
    runs: dict[str, list[list[float]]] = {name: [] for name in models}
    with torch.inference_mode():
        agree = {}
        for kind in ("image", "ssp"):  # the label maps of the whole stream, plain against fast
            a, b = streams[f"{kind}/plain"](), streams[f"{kind}/fast"]()
            agree[kind] = sum(int((x != y).sum()) for x, y in zip(a, b, strict=True)) / (len(a) * hh * ww)
        plain_logits = plain_ssp.image_model(frames[0])
        diff = (fast_ssp.image_model(frames[0]) - plain_logits).abs().max() / plain_logits.abs().max()
        agree["image_logits_rel_diff"] = float(diff)
        for fn in streams.values():
            for _ in range(args.warmup):
                fn()
        for _ in range(args.runs):  # interleaved: drift on a shared machine hits every model alike
            for name, model in models.items():
                runs[name].append(_timed_stream(model, frames, h, device))
    results = {name: summarise_runs(r) for name, r in runs.items()}
    report = {
        "model": f"{args.backbone} + {args.head}({image.head.width if hasattr(image.head, 'width') else '?'}), "
                 f"K = {args.classes}, random weights", "input_size": [hh, ww], "batch_size": 1, "precision": "fp32",
        "device": device_name(device), "threads": torch.get_num_threads(), "homographies": "precomputed",
        "frames": args.frames, "runs": args.runs, "results": results,
        "fast_over_plain": {k: round(results[f"{k}/fast"]["fps"] / results[f"{k}/plain"]["fps"], 3)
                            for k in ("image", "ssp")},
        "ssp_over_image": {k: round(results[f"ssp/{k}"]["fps"] / results[f"image/{k}"]["fps"], 3)
                           for k in ("plain", "fast")},
        "label_map_mismatch_share": {k: agree[k] for k in ("image", "ssp")},
        "image_logits_rel_diff": agree["image_logits_rel_diff"], "tolerance": TOLERANCE, "fast_path": fast,
        "software": software(),
    }  # fmt: skip
    out = Path(args.out) if args.out else (
        Path("checkpoints") / "fast_path_bench" / f"{args.backbone}_{hh}x{ww}_{device.type}_t{report['threads']}.json"
    )  # fmt: skip
    atomic_write_text(out, json.dumps(report, indent=1))
    print(format_report(report))
    print(f"written to {out}")
    return report


def format_report(report: dict) -> str:
    """A plain-text table of a report."""
    lines = [f"{report['model']} at {report['input_size'][0]}x{report['input_size'][1]}, batch 1, fp32, "
             f"{report['device']}, homographies precomputed"]  # fmt: skip
    lines.append(f"  {'model':<14}{'FPS':>8}{'mean ms':>10}{'p90 ms':>9}{'spread':>8}")
    for name, e in report["results"].items():
        lines.append(f"  {name:<14}{e['fps']:>8.2f}{e['mean_ms']:>10.1f}{e['p90_ms']:>9.1f}"
                     f"{100 * e['run_spread']:>7.1f}%")  # fmt: skip
    f, s = report["fast_over_plain"], report["ssp_over_image"]
    lines.append(f"  fast / plain: image x{f['image']:.3f}, SSP x{f['ssp']:.3f}; SSP / image: plain {s['plain']:.3f}, "
                 f"fast {s['fast']:.3f}")  # fmt: skip
    m = report["label_map_mismatch_share"]
    lines.append(f"  outputs: image logits differ by {report['image_logits_rel_diff']:.1e} (relative; tolerance "
                 f"{report['tolerance']:.0e}); label maps differ at {100 * m['image']:.4f} % (image), "
                 f"{100 * m['ssp']:.4f} % (SSP) of the pixels")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
