"""Speed of a run: ``python -m eval.benchmark RUN [--height H --width W] [--frames N] [--device cpu|cuda]``.

Follows ``metrics.md`` §7: eval mode, inference mode, batch 1, input already on the device, everything a method
needs per frame (backbone, head, registration, warping, fusion, upsampling, argmax), video models run over real
clips in order with their recurrent state (reset at clip boundaries), a warm-up, then timed frames in 3 runs and
the median run reported. GPU timing uses CUDA events and synchronisation; CPU timing ``perf_counter``.

Any run is timed through the video-model contract (an image run through the per-frame adapter), so every method
is measured the same way. The headline latency is measured without stage timers; a separate pass gives the
method's ``step`` a timer that wraps each of its stages (SSP: ``backbone``, ``head``, ``registration``, ``warp``,
``fusion``, ``upsample``; DFF: ``keyframe``, ``flow``, ``warp``, ``head``, ``upsample``; keyframe propagation:
``resize``, ``keyframe``, ``flow``, ``warp``, ``refine``, ``upsample``; all: ``argmax``),
synchronising on GPU, to show where the time goes. Frozen helpers never read on-disk caches here; ``--set``
replaces one of them for a run (``--set video_model_cfg.k_registrator_model=identity``). For a video run the
benchmark also times its image network alone on the same frames, device and precision, and prints the ratio.
Results go to ``<run>/benchmark/<device>_<H>x<W>_<precision>.json``.

Keyframe methods (any model whose frames report ``StepOutput.key_distance``: DFF, keyframe propagation) also get
the latency of keyframes and of the other frames, split from the headline's median run, and the average over one
key cycle at the model's interval ``i``, ``cycle_fps = (i + 1) / (t_key + i * t_nonkey)`` (``metrics.md`` §7,
``other_methods.md`` §4.7). ``--intervals 0,1,2,3,4`` (models offering the ``interval`` option) times the method
again at each interval and, unless ``--no-curve-miou``, scores avg / min mIoU by key distance on the val split:
§4.8's table as a curve (``report["curve"]``, ``monotonic``), plotted as mIoU against cycle FPS in
``<same name>_curve.png`` (:mod:`eval.key_curve`). Interval 0 is the per-frame image network at the method's
``eval_scale``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch

from config.cli import CliParser, at_least
from config.errors import ConfigError, run_cli
from config.files import atomic_write_text, check_writable
from data.frames import FramePair, open_split, read_frame
from data.transforms import resize_frame, to_tensor
from eval.benchmark_report import format_report
from eval.evaluate import autocast, device_name, label_map, resolve_device, software
from eval.key_curve import (
    CurveScoring,
    check_curve_model,
    curve_fields,
    key_split,
    measure_curve,
    parse_intervals,
    plot_curve,
)
from eval.timing import (
    StageTimer,
    median_run,
    peak_rss_mb,
    stage_split,
    summarise_runs,
)
from eval.vis.outputs import RUN_FOLDER_FIX
from models.fast_path import FastPath, add_fast_path_args, fast_path_of, prepare_inference
from models.runs import load_streaming_model, locate_run
from models.video.base import StepSide, VideoModel, no_timer
from models.video.per_frame import PerFrame


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m eval.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder name (in --save-dir) or path")
    p.add_argument("--save-dir", default="checkpoints")
    p.add_argument("--height", type=int, default=None, help="input height (default: the run's crop_size)")
    p.add_argument("--width", type=int, default=None, help="input width (default: the run's crop_size)")
    p.add_argument(
        "--frames", type=int, default=200, help="timed frames per run (>= 200 for reported figures)"
    )
    p.add_argument("--warmup", type=int, default=20, help="untimed frames before timing")
    p.add_argument("--runs", type=int, default=3, help="timed runs; the median run is reported")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "both"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="video runs: override a key of the stored config before building (frozen helpers only), "
                        "e.g. --set video_model_cfg.k_registrator_model=identity (repeatable)")  # fmt: skip
    p.add_argument("--split", default="val", help="clips whose frames are fed (resized to H x W)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU: torch threads (default: torch's choice); recorded with the figures")  # fmt: skip
    p.add_argument("--best-model", action="store_true")
    p.add_argument(
        "--no-image-baseline", action="store_true", help="video runs: skip timing the image network"
    )
    p.add_argument("--intervals", default=None, metavar="LIST",
                   help="keyframe methods: time (and score) each keyframe interval of LIST, e.g. 0,1,2,3,4, for "
                        "the accuracy/speed curve")  # fmt: skip
    p.add_argument("--curve-miou", action=argparse.BooleanOptionalAction, default=None,
                   help="with --intervals: score avg and min mIoU by key distance on the val split at each "
                        "interval (default: on)")  # fmt: skip
    p.add_argument("--num-workers", type=at_least(0), default=0, help="--curve-miou: data-loader workers")
    add_fast_path_args(p)
    p.add_argument("--fast-path-steps", action="store_true",
                   help="also time the model with the fast path's steps added one at a time (plain, + BatchNorm "
                        "folding, + channels_last, + fast module forms), fp32, same frames")  # fmt: skip
    return p


def _frames(
    run_cfg: Any, split: str, size: tuple[int, int], n: int
) -> list[tuple[np.ndarray, FramePair | None]]:
    """Up to ``n`` frames of the split's clips in order, resized to ``size``, with the pair to the previous frame
    (None at a clip start)."""
    out: list[tuple[np.ndarray, FramePair | None]] = []
    for clip in open_split(run_cfg.data_cfg, split)[2]:
        for i in range(len(clip)):
            out.append((resize_frame(read_frame(clip.frames[i]), size), clip.pair(i - 1, i) if i else None))
            if len(out) >= n:
                return out
    return out


# A stepper: (frame, pair to the previous frame, stage timer) -> the frame's key distance (None: no keyframes).
Step = Callable[[torch.Tensor, FramePair | None, StageTimer | None], int | None]


def _time_frames(
    step: Step, frames: list[tuple[torch.Tensor, FramePair | None]], n: int, warmup: int, device: torch.device,
    timer: StageTimer | None = None, distances: list[int | None] | None = None,
) -> list[float]:  # fmt: skip
    """Per-frame latencies (ms) of ``n`` frames after ``warmup`` untimed ones, cycling through ``frames``.
    ``distances``, when given, receives each timed frame's key distance (what ``step`` returns), so that keyframe
    and non-keyframe latencies can be told apart afterwards (a list append: the timed path stays as it was)."""
    lat: list[float] = []
    cuda = device.type == "cuda"
    for k in range(warmup + n):
        x, pair = frames[k % len(frames)]
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            d = step(x, pair, timer)
            end.record()
            torch.cuda.synchronize(device)
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            d = step(x, pair, timer)
            ms = (time.perf_counter() - t0) * 1e3
        if k >= warmup:
            lat.append(ms)
            if distances is not None:
                distances.append(d)
    return lat


def _timed_runs(
    steppers: dict[str, Step], frames: list[tuple[torch.Tensor, FramePair | None]], args: argparse.Namespace,
    device: torch.device,
) -> dict[str, tuple[list[list[float]], list[list[int | None]]]]:  # fmt: skip
    """``args.warmup`` untimed frames, then ``args.runs`` timed runs of ``args.frames`` per stepper, interleaved
    (drift on a shared machine hits every model alike): name -> (latencies per run, key distances per run)."""
    out: dict[str, tuple[list[list[float]], list[list[int | None]]]] = {name: ([], []) for name in steppers}
    for step in steppers.values():
        _time_frames(step, frames, 0, args.warmup, device)
    for _ in range(args.runs):
        for name, step in steppers.items():
            dist: list[int | None] = []
            out[name][0].append(_time_frames(step, frames, args.frames, 0, device, distances=dist))
            out[name][1].append(dist)
    return out


def _steppers(
    model: VideoModel, dtype: torch.dtype | None, device: torch.device, baseline: bool
) -> dict[str, Step]:
    """name -> per-frame function ``(x [1,3,H,W], pair, timer) -> key distance`` (prediction computed and
    argmaxed; the frame's ``StepOutput.key_distance``, None for a method without keyframes).

    ``image`` for a run whose model is the per-frame adapter (an image run), else ``video`` and, with
    ``baseline``, ``image``: the model's own image network through the per-frame adapter, on the same frames."""
    models = {"image": model} if model.per_frame else {"video": model}
    if baseline and not model.per_frame:
        models["image"] = PerFrame(model.image_model).eval()
    out: dict[str, Callable] = {}
    for name, m in models.items():
        state = {"s": m.init_state()}

        def step(x: torch.Tensor, pair: FramePair | None, timer: StageTimer | None, m: VideoModel = m,
                 state: dict = state) -> int | None:  # fmt: skip
            if pair is None:
                state["s"] = m.init_state()  # clip boundary
            with autocast(device, dtype):
                o, state["s"] = m.step(x, state["s"], StepSide(pair=pair, timer=timer or no_timer))
            with timer("argmax") if timer is not None else _null():
                label_map(o.logits)
            return o.key_distance

        out[name] = step
    return out


@contextmanager
def _null() -> Iterator[None]:
    yield


def _key_split(model: VideoModel, timed: tuple[list[list[float]], list[list[int | None]]]) -> dict | None:
    """The keyframe / non-keyframe split of the median run (the one the headline reports), at the model's
    current interval; None for a model whose frames report no key distance."""
    lat, dist = timed
    k = median_run(lat)
    return key_split(lat[k], dist[k], model.options().get("interval"))


def _time_alone(model: VideoModel, dtype: torch.dtype | None, frames: list[tuple[torch.Tensor, FramePair | None]],
                args: argparse.Namespace, device: torch.device) -> dict[str, Any]:  # fmt: skip
    """``--intervals``: the method alone, from a fresh state, timed like the headline (figures of the median run
    with its keyframe split)."""
    steppers = _steppers(model, dtype, device, baseline=False)
    with torch.inference_mode():
        timed = next(iter(_timed_runs(steppers, frames, args, device).values()))
    return {**summarise_runs(timed[0]), **(_key_split(model, timed) or {})}


# The fast path's steps, added one at a time (--fast-path-steps): each one's saving is the difference to the row above.
FAST_PATH_STEPS = {
    "plain": FastPath.off(),
    "+ BatchNorm folding": FastPath(fold_bn=True, channels_last=False, fast_modules=False),
    "+ channels_last": FastPath(fold_bn=True, channels_last=True, fast_modules=False),
    "+ fast module forms": FastPath(fold_bn=True, channels_last=True, fast_modules=True),
}


def _fast_path_steps(run: Any, args: argparse.Namespace, device: torch.device,
                     frames: list[tuple[torch.Tensor, FramePair | None]]) -> list[dict[str, Any]]:  # fmt: skip
    """fp32 figures of the method with each cumulative fast-path step (a fresh model each: the steps act in place),
    timed like the headline (interleaved runs, median run)."""
    steppers, built = {}, {}
    for name, options in FAST_PATH_STEPS.items():
        model, _, _ = load_streaming_model(run, args.best_model, use_caches=False, overrides=args.set)
        model.to(device).eval()
        built[name] = prepare_inference(model, device, options)
        steppers[name] = _steppers(model, None, device, baseline=False)[
            "image" if model.per_frame else "video"
        ]
    with torch.inference_mode():
        timed = _timed_runs(steppers, frames, args, device)
    rows = [{"step": name, **summarise_runs(timed[name][0]), "bn_folded": built[name]["bn_folded"],
             "probe_diff": built[name]["probe_diff"]} for name in steppers]  # fmt: skip
    plain = rows[0]["fps"]
    for row in rows:
        row["speedup"] = round(row["fps"] / plain, 3)
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.frames < 1 or args.runs < 1 or args.warmup < 0:
        raise ConfigError("--frames and --runs must be at least 1, --warmup at least 0")
    if any(v is not None and v < 1 for v in (args.height, args.width)):
        raise ConfigError(f"--height {args.height} --width {args.width}: sizes must be at least 1 pixel")
    device = resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.intervals is None and args.curve_miou is not None:
        raise ConfigError("--curve-miou / --no-curve-miou: only with --intervals (the curve it scores)")
    intervals = parse_intervals(args.intervals) if args.intervals is not None else None
    run = locate_run(args.run, args.save_dir)
    check_writable(run / "benchmark", fix=RUN_FOLDER_FIX)  # now, not after minutes of timing
    # Never an on-disk cache of a helper's results: a benchmark times the estimate itself, not reading it back.
    model, cfg, meta = load_streaming_model(run, args.best_model, use_caches=False, overrides=args.set)
    kind = meta.get("kind")
    model.to(device).eval()
    fast = prepare_inference(model, device, fast_path_of(args))
    if intervals is not None:
        check_curve_model(model)  # before any timing
    h = cfg.data_cfg.crop_size[0] if args.height is None else args.height
    w = cfg.data_cfg.crop_size[1] if args.width is None else args.width
    model.image_model.check_input_size(h, w)
    raw = _frames(cfg, args.split, (h, w), max(args.frames, 50))
    frames = [(to_tensor([f]).to(device), pair) for f, pair in raw]
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    results: dict[str, Any] = {}
    curve: list[dict[str, Any]] = []
    want_miou = intervals is not None and args.curve_miou is not False
    crop = (cfg.data_cfg.crop_size[0], cfg.data_cfg.crop_size[1])
    val = open_split(cfg.data_cfg, "val", cfg.data_cfg.min_vid_len)[1:] if want_miou else None
    for prec in precisions:
        dtype = torch.bfloat16 if prec == "bf16" else None
        steppers = _steppers(model, dtype, device, baseline=not args.no_image_baseline)
        n_stage = min(args.frames, 50)
        with torch.inference_mode():
            runs = _timed_runs(steppers, frames, args, device)
            for name, step in steppers.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                timer = StageTimer(device)
                stage_pass = _time_frames(step, frames, n_stage, 0, device, timer)
                entry = summarise_runs(runs[name][0])
                entry.update(_key_split(model, runs[name]) or {})  # keyframe methods only: others as before
                pass_ms = sum(stage_pass) / n_stage
                split = stage_split({k: v / n_stage for k, v in timer.ms.items()}, pass_ms)
                entry["stages_ms"] = {k: round(v, 3) for k, v in split.items()}
                entry["stage_sum_ms"] = round(
                    pass_ms, 3
                )  # the stage pass's frame time, which the split adds up to
                entry["peak_memory_mb"] = (
                    round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda"
                    else round(peak_rss_mb(), 1)
                )  # fmt: skip
                entry["peak_memory_kind"] = (
                    "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"
                )
                results[f"{name}/{prec}"] = entry
        if {"video", "image"} <= set(steppers):
            results[f"ratio/{prec}"] = round(
                results[f"video/{prec}"]["fps"] / results[f"image/{prec}"]["fps"], 3
            )
        if intervals is not None:
            image = results.get(f"image/{prec}")
            scoring = None if val is None else CurveScoring(*val, crop, device, dtype, args.num_workers)
            curve += measure_curve(model, intervals, partial(_time_alone, model, dtype, frames, args, device),
                                   scoring, image and image["fps"], prec)  # fmt: skip
    on_cuda = device.type == "cuda"
    report = {
        "run": str(run), "checkpoint": meta["path"], "kind": kind, "input_size": [h, w], "batch_size": 1,
        "device": device_name(device), "threads": torch.get_num_threads(),
        "tf32": torch.backends.cuda.matmul.allow_tf32 if on_cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "torch_compile": "default" if args.compile else None,
        "fast_path": fast,
        "video_model": model.describe(), "frames_source": f"{cfg.data_cfg.dataset} {args.split} clips resized to {h}x{w}",
        "warmup": args.warmup, "timed_frames": args.frames, "runs": args.runs, "results": results,
        "software": software(),
    }  # fmt: skip
    suffix = f"_t{args.threads}" if args.threads is not None else ""
    stem = f"{device.type}_{h}x{w}_{args.precision}{suffix}"
    if intervals is not None:
        plot = run / "benchmark" / f"{stem}_curve.png" if want_miou else None
        source = (
            f"{cfg.data_cfg.dataset} val clips at the run's crop size {crop[0]}x{crop[1]}, key phases auto"
        )
        report.update(curve_fields(curve, plot, source if want_miou else None))
        if plot is not None:
            plot_curve(curve, plot, f"{run.name}: mIoU against cycle FPS ({report['device']}, {h}x{w})")
    if args.fast_path_steps:
        report["fast_path_steps"] = _fast_path_steps(run, args, device, frames)
    out = run / "benchmark" / f"{stem}.json"
    atomic_write_text(out, json.dumps(report, indent=1), fix=RUN_FOLDER_FIX)
    print(format_report(report))
    print(f"written to {out}")
    return report


if __name__ == "__main__":
    run_cli(main)
