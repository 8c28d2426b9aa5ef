"""Training throughput: the settings the training loop applies, and a benchmark of one training step.

``python -m training.step_bench CONFIG [key=value ...] [--steps N] [--warmup N] [--device auto|cpu|cuda]
[--precision fp32|bf16|both] [--channels-last auto|on|off|both] [--height H --width W] [--batch-size B]
[--threads T] [--data random|real] [--random-init] [--out PATH]``

The benchmark builds the config's model (image config: the segmentor; video config: the video model around its
image run, with the method's registered training step) and times forward + backward + optimizer step on one fixed
batch of the config's shape, for every precision x memory-format combination: CUDA events and a synchronize per
step on a GPU, ``perf_counter`` on the CPU. Data loading is not timed (training reports it: ``loader_wait_ms``).
It prints a table and writes JSON (and the table as Markdown beside it) with the device, software, threads, input
size, batch size and, per combination, the step time mean/median, images/s, peak memory and the ratios to fp32
NCHW. ``--random-init`` skips the pretrained backbone files: the timings are the same, the losses mean nothing.

The benchmark applies what the training loop (:mod:`training.loop`) applies, so it times what training runs:
:mod:`training.throughput`'s settings, channels_last conversion and compilation.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from config.cli import CliParser, at_least
from config.errors import CheckpointError, ConfigError, run_cli
from config.files import atomic_write_text
from config.loader import CONFIG_ROOT, load, read_yaml
from data.catalog import get_dataset_info
from data.frames import open_split
from data.image_dataset import LabelledFrames
from data.video_batch import collate_video
from data.video_dataset import video_samples
from eval.evaluate import autocast, device_name, resolve_device, software
from models.build import build_image_model, build_video_model
from models.runs import image_run_of, load_image_model
from training.losses import build_segmentation_loss
from training.optim import build_optimizer
from training.steps import VIDEO_STEPS, image_step, step_name
from training.throughput import (
    channels_last_enabled,
    compile_errors,
    compile_model,
    peak_memory_mb,
    to_channels_last,
)

# ------------------------------------------------------------------------------------------------ the benchmark


@dataclasses.dataclass
class Bench:
    """One config's benchmark: ``make()`` builds a fresh model (CPU), ``step(model, batch) -> (loss, parts)`` is the
    training step, ``batch`` the fixed batch (image: ``{"image": [B,3,H,W], "label": [B,H,W]}``; video: a
    ``VideoBatch``) and ``step_name`` says which step it is."""

    make: Callable[[], nn.Module]
    step: Callable[[nn.Module, Any], tuple[torch.Tensor, dict]]
    batch: Any
    step_name: str


def config_kind(name: str) -> str:
    """``image`` or ``video``: a bare name by the folder it is in, a file by its sections (or its base's)."""
    path = Path(name)
    if not path.is_file():
        stem = path.name.removesuffix(".yaml")
        return "video" if (CONFIG_ROOT / "video" / f"{stem}.yaml").is_file() else "image"
    data = read_yaml(path)
    if {"video_model_cfg", "image_model_cfg"} & set(data):
        return "video"
    base = data.get("base")  # the loader looks for it beside the file, then in config/<kind>/
    if not isinstance(base, str):
        return "image"  # (a base that is not a name is the loader's error)
    return config_kind(str(path.parent / f"{base.removesuffix('.yaml')}.yaml"))


def _image_bench(cfg: Any, size: tuple[int, int], batch_size: int, real: bool, random_init: bool,
                 device: torch.device) -> Bench:  # fmt: skip
    info = get_dataset_info(cfg.data_cfg.dataset)

    def make() -> nn.Module:
        model = build_image_model(cfg.model_cfg, info.num_classes, load_backbone_weights=not random_init)
        model.check_input_size(*size)
        return model

    make()  # a missing weight file or a bad input size: now, not after the first timing
    # a distillation config's teacher is not timed: the step is the supervised image step on the student
    loss_fn = build_segmentation_loss(
        dataclasses.replace(cfg.loss_cfg, loss_func="crossentropy"), info.num_classes
    )
    loss_fn.to(device)
    if real:
        _, _, clips = open_split(cfg.data_cfg, "train", cfg.data_cfg.min_vid_len)
        frames = LabelledFrames(clips, info, size, train=True, square_crop=cfg.data_cfg.square_crop,
                                skip=cfg.data_cfg.train_skip_frames, seed=cfg.training_cfg.seed)  # fmt: skip
        items = [frames[i % len(frames)] for i in range(batch_size)]
        batch = default_collate([{"image": it["image"], "label": it["label"]} for it in items])
    else:
        g = torch.Generator().manual_seed(0)
        batch = {"image": torch.randn(batch_size, 3, *size, generator=g),  # ImageNet-normalised images: ~N(0, 1)
                 "label": torch.randint(0, info.num_classes, (batch_size, *size), generator=g)}  # fmt: skip
    return Bench(make, lambda m, b: image_step(m, b, loss_fn, device), batch, "image_step (cross-entropy)")


def _video_bench(
    cfg: Any, size: tuple[int, int], batch_size: int, random_init: bool, device: torch.device
) -> Bench:
    image_run = image_run_of(cfg.image_model_cfg)

    def make() -> nn.Module:
        image_model, _, _ = load_image_model(image_run, best=cfg.image_model_cfg.best_model)
        image_model.check_input_size(*size)
        return build_video_model(cfg, image_model, device=device, pretrained=not random_init)

    probe = make()
    _, info, clips = open_split(cfg.data_cfg, "train", cfg.data_cfg.min_vid_len)
    name = step_name(probe.train_step, cfg.loss_cfg.loss_func)
    step = VIDEO_STEPS.get(name)(cfg, info, device)
    dcfg = cfg.data_cfg
    samples = video_samples(clips, info, size, probe.needs().merge(step.needs), train=True,
                            skip=dcfg.train_skip_frames, seed=cfg.training_cfg.seed, edge_policy=dcfg.edge_policy,
                            square_crop=dcfg.square_crop)  # fmt: skip
    batch = collate_video([samples[i % len(samples)] for i in range(batch_size)])
    return Bench(make, step, batch, name)


def time_combination(bench: Bench, cfg: Any, device: torch.device, precision: str, channels_last: bool,
                     steps: int, warmup: int) -> dict[str, Any]:  # fmt: skip
    """Time ``warmup + steps`` training steps of a fresh model (same seed for every combination); the last
    ``steps`` count. Each step: forward and loss under autocast, backward, optimizer step, zero grad."""
    torch.manual_seed(0)
    model = bench.make().to(device).train()
    if channels_last:
        to_channels_last(model)
    forward = compile_model(model, device) if cfg.training_cfg.compile else model
    optimizer = build_optimizer(model, cfg.training_cfg, cfg.optim_cfg)
    dtype = torch.bfloat16 if precision == "bf16" else None
    batch = bench.batch
    if device.type == "cuda":
        batch = (
            batch.pin_memory()
            if hasattr(batch, "pin_memory")
            else {k: v.pin_memory() for k, v in batch.items()}
        )
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    times, losses = [], []  # times: every step's ms, warm-up included
    for _ in range(warmup + steps):
        start = time.perf_counter()
        if device.type == "cuda":
            events[0].record()
        with compile_errors(cfg.training_cfg.compile, device):
            with autocast(device, dtype):
                loss, _ = bench.step(forward, batch)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            events[1].record()
            events[1].synchronize()
            ms = events[0].elapsed_time(events[1])
        else:
            ms = 1000 * (time.perf_counter() - start)
        losses.append(loss.item())
        times.append(ms)
    first_ms, times = times[0], times[warmup:]
    median = statistics.median(times)
    out = {
        "precision": precision, "channels_last": channels_last, "layout": "NHWC" if channels_last else "NCHW",
        "autocast_dtype": None if dtype is None else "bfloat16",
        "step_ms_mean": round(statistics.fmean(times), 3), "step_ms_median": round(median, 3),
        "step_ms_min": round(min(times), 3), "step_ms_max": round(max(times), 3),
        "first_step_ms": round(first_ms, 3),  # includes the compilation under training_cfg.compile
        "images_per_s": round(_batch_size(batch) * 1000 / median, 2),  # samples per second, from the median
        "peak_memory_mb": peak_memory_mb(device), "loss_first": losses[0], "loss_last": losses[-1],
        "parameters": sum(p.numel() for p in model.parameters()),
    }  # fmt: skip
    del model, forward, optimizer
    gc.collect()
    return out


def _batch_size(batch: Any) -> int:
    return int(batch["image"].shape[0]) if isinstance(batch, dict) else batch.batch_size


def add_ratios(results: list[dict]) -> None:
    """Each result's speed (median step time of fp32 NCHW / its own) and memory relative to fp32 NCHW, when that
    combination ran; None otherwise."""
    base = next((r for r in results if r["precision"] == "fp32" and not r["channels_last"]), None)
    for r in results:
        r["speedup_vs_fp32_nchw"] = (
            None if base is None else round(base["step_ms_median"] / r["step_ms_median"], 3)
        )
        r["memory_vs_fp32_nchw"] = (
            None if base is None else round(r["peak_memory_mb"] / base["peak_memory_mb"], 3)
        )


def table(results: list[dict], memory: str) -> str:
    """The results as a Markdown table."""
    lines = [f"| precision | layout | step ms mean | step ms median | images/s | {memory} MB | speed vs fp32 NCHW "
             "| memory vs fp32 NCHW |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        ratio = "n/a" if r["speedup_vs_fp32_nchw"] is None else f"{r['speedup_vs_fp32_nchw']:.2f}x"
        mem = "n/a" if r["memory_vs_fp32_nchw"] is None else f"{r['memory_vs_fp32_nchw']:.2f}x"
        lines.append(f"| {r['precision']} | {r['layout']} | {r['step_ms_mean']:.1f} | {r['step_ms_median']:.1f} "
                     f"| {r['images_per_s']:.2f} | {r['peak_memory_mb']:.0f} | {ratio} | {mem} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m training.step_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="config name in config/image/ or config/video/, or a path to a YAML file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training_cfg.amp=bf16")
    p.add_argument("--steps", type=at_least(1), default=20, help="timed steps per combination (default 20)")
    p.add_argument("--warmup", type=at_least(0), default=3, help="untimed steps first (default 3)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if visible")
    p.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both", help="(default both)")
    p.add_argument(
        "--channels-last",
        choices=("auto", "on", "off", "both"),
        default="both",
        help="auto: on for CUDA only",
    )
    p.add_argument("--height", type=at_least(1), help="input height (default: data_cfg.crop_size)")
    p.add_argument("--width", type=at_least(1), help="input width (default: data_cfg.crop_size)")
    p.add_argument("--batch-size", type=at_least(1), help="samples per step (default: training_cfg's)")
    p.add_argument("--threads", type=at_least(1), help="torch intra-op threads (default: torch's)")
    p.add_argument("--data", choices=("random", "real"), help="random (image default) or the train split's")
    p.add_argument("--random-init", action="store_true", help="timing only: no pretrained backbone files")
    p.add_argument("--out", type=Path, help="JSON file or folder (default: SAVE_DIR/step_bench/)")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table; write the JSON and the Markdown table; return the JSON's content."""
    args = build_parser().parse_args(argv)
    if (args.height is None) != (args.width is None):
        raise ConfigError("--height/--width: give both or neither")
    if args.threads:
        torch.set_num_threads(args.threads)
    kind = config_kind(args.config)
    cfg = load(args.config, kind, args.overrides)
    device = resolve_device(args.device)
    size = (args.height, args.width) if args.height else tuple(cfg.data_cfg.crop_size)
    batch_size = args.batch_size or cfg.training_cfg.batch_size
    if kind == "video" and args.data == "random":
        raise ConfigError("--data: a video batch (frames, flows, homographies ...) is read from the train split; "
                          "use --data real")  # fmt: skip
    real = kind == "video" or args.data == "real"
    try:  # each builds a model first: a missing weight file is reported before any timing
        bench = (_video_bench(cfg, size, batch_size, args.random_init, device) if kind == "video"
                 else _image_bench(cfg, size, batch_size, real, args.random_init, device))  # fmt: skip
    except CheckpointError as err:
        raise CheckpointError(f"{err}; --random-init times the step without weight files") from None
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    layouts = {"both": [False, True], "on": [True], "off": [False]}.get(
        args.channels_last, [channels_last_enabled("auto", device)]
    )
    results = []
    for precision in precisions:
        for cl in layouts:
            print(f"== {precision} {'NHWC' if cl else 'NCHW'}: {args.warmup}+{args.steps} steps", flush=True)
            results.append(time_combination(bench, cfg, device, precision, cl, args.steps, args.warmup))
    add_ratios(results)
    memory = "CUDA max allocated" if device.type == "cuda" else "process peak RSS"
    report = {
        "config": args.config, "kind": kind, "overrides": args.overrides, "step": bench.step_name,
        "device": device_name(device), "device_type": device.type, "software": software(),
        "threads": torch.get_num_threads(), "input_size": list(size), "batch_size": batch_size,
        "frames_per_sample": getattr(bench.batch, "num_frames", 1), "data": "real" if real else "random",
        "random_init": args.random_init, "compile": cfg.training_cfg.compile, "steps": args.steps,
        "warmup": args.warmup, "parameters": results[0]["parameters"], "optimizer": cfg.optim_cfg.optimizer,
        "timing": "CUDA events, synchronize per step" if device.type == "cuda" else "perf_counter per step",
        "memory": memory + (" (the whole process's high-water mark: it never goes down between combinations)"
                            if device.type == "cpu" else " (reset per combination)"),
        "results": results,
    }  # fmt: skip
    text = table(results, memory)
    print(
        f"{report['device']}; {kind} {args.config}, input {size[0]}x{size[1]}, batch {batch_size}\n{text}",
        end="",
    )
    out = args.out or Path(cfg.save_dir) / "step_bench"
    if out.is_dir() or out.suffix != ".json":
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        out = out / f"{Path(args.config).stem}_{device.type}_{size[0]}x{size[1]}_b{batch_size}_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=1))
    atomic_write_text(out.with_suffix(".md"), text)
    print(f"== wrote {out} (and the table: {out.with_suffix('.md')})")
    report["path"] = str(out)
    return report


if __name__ == "__main__":
    run_cli(main)
